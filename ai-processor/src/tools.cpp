#include "tools.h"

namespace engram::ai {

const std::vector<Tool>& all_tools() {
    // The one place tools are registered.
    static const std::vector<Tool> tools = {
        make_think_tool(), make_send_message_tool(), make_remember_tool(), make_recall_tool(), make_task_complete_tool(),
    };
    return tools;
}

const Tool* find_tool(const std::string& name) {
    for (const auto& t : all_tools())
        if (t.name == name) return &t;
    return nullptr;
}

std::optional<std::string> string_arg(const nlohmann::json& args, const char* name) {
    if (!args.is_object() || !args.contains(name) || !args[name].is_string()) return std::nullopt;
    auto s = args[name].get<std::string>();
    if (s.find_first_not_of(" \t\r\n") == std::string::npos) return std::nullopt;
    return s;
}

}  // namespace engram::ai
