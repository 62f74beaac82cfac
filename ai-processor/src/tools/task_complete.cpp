// task_complete: ends the run (AIProcessingCompleted, stop_reason task_complete).
#include "tools.h"

namespace engram::ai {

Tool make_task_complete_tool() {
    return Tool{"task_complete",
                "Call when the user's request is fully handled (after sending any message). Ends the run.",
                {{"type", "object"},
                 {"properties", {{"summary", {{"type", "string"}, {"description", "One sentence on what was done."}}}}}},
                [](ToolContext&, const nlohmann::json& args) -> ToolResult {
                    ToolResult r = ToolResult::ok("done");
                    r.completes_run = true;
                    if (auto s = string_arg(args, "summary")) r.summary = *s;
                    return r;
                }};
}

}  // namespace engram::ai
