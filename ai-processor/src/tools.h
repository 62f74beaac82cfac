#pragma once
// The agent's tools, registered in one place (tools.cpp: all_tools()). A tool is a name, a
// description, a JSON-schema for its arguments and an execute function. Adding a tool = one file
// under tools/ defining make_<name>_tool() plus one line in all_tools().
//
// Crash safety: a tool that writes an event does it through ToolContext::record_effect(), which gives
// the event the deterministic id Uuid::v5(trigger id, "iter:<n>:effect:<k>"). A re-run after a crash
// re-appends the same event (the store answers 200, nothing is duplicated); `recorded_effect` holds the
// effect event already in the session log (when there is one) so a tool whose effect depends on the
// outside world (recall) reuses what was recorded instead of asking again.
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engram/core/result.h"
#include "engram/core/time.h"
#include "engram/events/event.h"

namespace engram::nats {
class Connection;
}

namespace engram::ai {

struct ToolContext {
    std::string user_id;
    std::string session_id;
    std::string channel;  // MessageGenerated channel (from the trigger / session id)
    std::string run_id;
    int iteration = 1;
    std::string tool_call_id;
    nlohmann::json reply_to;           // the trigger's message id (null when none)
    nats::Connection* nats = nullptr;  // recall; may be null (then recall fails as a tool error)
    std::chrono::milliseconds recall_timeout{5000};
    std::optional<events::Event> recorded_effect;  // the effect event already in the log, if any
    // Appends the tool's effect event with the deterministic id of this call (metadata filled).
    std::function<Status(events::NewEvent)> record_effect;
    std::string effect_id;  // the id record_effect gives the effect (a reminder's id is its event's)
    SysTime now{};          // when the tool runs (a recorded effect keeps what was decided then)
    // GET of an event store path: the JSON body on 200, null on 404, an Error otherwise.
    std::function<Result<nlohmann::json>(const std::string& path)> store_get;
};

struct ToolResult {
    nlohmann::json result;  // given to the model (a string as is, anything else as JSON text)
    bool is_error = false;
    bool completes_run = false;  // task_complete
    std::string summary;         // task_complete's summary
    // Store errors (the event store is down): the handler returns the error and the run is retried.
    std::optional<Error> fatal;

    static ToolResult ok(nlohmann::json r) {
        ToolResult t;
        t.result = std::move(r);
        return t;
    }
    static ToolResult error(std::string message) {
        ToolResult t;
        t.result = std::move(message);
        t.is_error = true;
        return t;
    }
    static ToolResult store_error(Error e) {
        ToolResult t = error(e.detail);
        t.fatal = std::move(e);
        return t;
    }
};

struct Tool {
    std::string name;
    std::string description;
    nlohmann::json parameters;  // JSON schema (type object)
    std::function<ToolResult(ToolContext&, const nlohmann::json& args)> execute;
};

// Every tool, in the order offered to the model: the built-in ones, then those of the external
// source (MCP servers), if one is set.
std::vector<Tool> all_tools();
std::optional<Tool> find_tool(const std::string& name);
// Where tools beyond the built-in ones come from (called for every listing; thread-safe).
void set_external_tools(std::function<std::vector<Tool>()> source);

// One line per tool file.
Tool make_think_tool();
Tool make_send_message_tool();
Tool make_remember_tool();
Tool make_recall_tool();
Tool make_task_complete_tool();
Tool make_schedule_tool();
Tool make_cancel_reminder_tool();
Tool make_list_reminders_tool();

// Helper for tools: a required non-empty string argument, or an error message.
std::optional<std::string> string_arg(const nlohmann::json& args, const char* name);

}  // namespace engram::ai
