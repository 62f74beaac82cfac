// think: private reasoning, recorded as ThinkingGenerated on the session.
#include "tools.h"

namespace engram::ai {

Tool make_think_tool() {
    return Tool{"think",
                "Think step by step before acting. The thought is recorded but never shown to the user.",
                {{"type", "object"},
                 {"properties", {{"thought", {{"type", "string"}, {"description", "Your reasoning."}}}}},
                 {"required", {"thought"}}},
                [](ToolContext& ctx, const nlohmann::json& args) -> ToolResult {
                    auto thought = string_arg(args, "thought");
                    if (!thought) return ToolResult::error("think needs a non-empty string argument 'thought'");
                    events::NewEvent e{.id = {},
                                       .type = "ThinkingGenerated",
                                       .aggregate_id = ctx.session_id,
                                       .data = {{"text", *thought},
                                                {"run_id", ctx.run_id},
                                                {"iteration", ctx.iteration},
                                                {"tool_call_id", ctx.tool_call_id}}};
                    if (auto s = ctx.record_effect(std::move(e)); !s) return ToolResult::store_error(s.error());
                    return ToolResult::ok("ok");
                }};
}

}  // namespace engram::ai
