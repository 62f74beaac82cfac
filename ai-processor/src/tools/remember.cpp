// remember: a MemoryStored on the user's stream (user:<user_id>); the memory processor indexes it.
#include "tools.h"

namespace engram::ai {

Tool make_remember_tool() {
    return Tool{
        "remember",
        "Store a long-term memory about the user (a self-contained sentence), e.g. a fact or preference.",
        {{"type", "object"},
         {"properties",
          {{"text", {{"type", "string"}, {"description", "The memory, as a self-contained sentence."}}},
           {"kind", {{"type", "string"}, {"enum", {"fact", "preference", "profile", "instruction", "event", "note"}}}},
           {"importance", {{"type", "number"}, {"minimum", 0}, {"maximum", 1}, {"description", "0 (trivia) to 1 (essential)."}}},
           {"key",
            {{"type", "string"},
             {"description", "With kind 'profile': the profile field it sets, e.g. 'name' or 'timezone' (an IANA name)."}}},
           {"value", {{"type", "string"}, {"description", "With 'key': the field's value, e.g. 'Europe/Berlin'."}}}}},
         {"required", {"text"}}},
        [](ToolContext& ctx, const nlohmann::json& args) -> ToolResult {
            auto text = string_arg(args, "text");
            if (!text) return ToolResult::error("remember needs a non-empty string argument 'text'");
            if (text->size() > 8000) return ToolResult::error("remember: text is longer than 8000 characters");
            if (ctx.user_id.empty()) return ToolResult::error("remember: the trigger names no user");
            nlohmann::json data = {{"user_id", ctx.user_id},
                                   {"text", *text},
                                   {"session_id", ctx.session_id},
                                   {"run_id", ctx.run_id},
                                   {"tool_call_id", ctx.tool_call_id}};
            static const std::vector<std::string> kinds = {"fact", "preference", "profile", "instruction", "event", "note"};
            if (args.contains("kind") && args["kind"].is_string() &&
                std::find(kinds.begin(), kinds.end(), args["kind"].get<std::string>()) != kinds.end())
                data["kind"] = args["kind"];
            if (auto key = string_arg(args, "key"); key && key->size() <= 64) {
                data["key"] = *key;
                data["kind"] = "profile";  // a key names a profile field
                if (auto value = string_arg(args, "value"); value && value->size() <= 8000) data["value"] = *value;
            }
            if (args.contains("importance") && args["importance"].is_number()) {
                double v = args["importance"].get<double>();
                if (v >= 0 && v <= 1) data["importance"] = v;
            }
            events::NewEvent e{.id = {}, .type = "MemoryStored", .aggregate_id = "user:" + ctx.user_id, .data = std::move(data)};
            if (auto s = ctx.record_effect(std::move(e)); !s) return ToolResult::store_error(s.error());
            return ToolResult::ok("remembered");
        }};
}

}  // namespace engram::ai
