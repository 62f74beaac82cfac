#include "tools.h"

#include <mutex>

namespace engram::ai {

namespace {
const std::vector<Tool>& builtin_tools() {
    // The one place the built-in tools are registered.
    static const std::vector<Tool> tools = {
        make_think_tool(),         make_send_message_tool(), make_remember_tool(),        make_recall_tool(),
        make_task_complete_tool(), make_schedule_tool(),     make_cancel_reminder_tool(), make_list_reminders_tool(),
    };
    return tools;
}
std::mutex external_mu;
std::function<std::vector<Tool>()> external;  // guarded by external_mu
}  // namespace

void set_external_tools(std::function<std::vector<Tool>()> source) {
    std::lock_guard lk(external_mu);
    external = std::move(source);
}

std::vector<Tool> all_tools() {
    std::vector<Tool> out = builtin_tools();
    std::function<std::vector<Tool>()> source;
    {
        std::lock_guard lk(external_mu);
        source = external;
    }
    if (source) {
        for (auto& t : source()) {
            bool clash = false;
            for (const auto& b : out) clash = clash || b.name == t.name;
            if (!clash) out.push_back(std::move(t));  // a built-in name is never shadowed
        }
    }
    return out;
}

std::optional<Tool> find_tool(const std::string& name) {
    for (const auto& t : builtin_tools())
        if (t.name == name) return t;
    for (auto& t : all_tools())
        if (t.name == name) return t;
    return std::nullopt;
}

std::optional<std::string> string_arg(const nlohmann::json& args, const char* name) {
    if (!args.is_object() || !args.contains(name) || !args[name].is_string()) return std::nullopt;
    auto s = args[name].get<std::string>();
    if (s.find_first_not_of(" \t\r\n") == std::string::npos) return std::nullopt;
    return s;
}

}  // namespace engram::ai
