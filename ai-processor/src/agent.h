#pragma once
// engram-ai-processor: the agent loop with crash-safe resume.
//
// A run answers one trigger T (TriggerReceived / MessageReceived). Every event of the run lives on the
// session aggregate (MemoryStored on user:<user_id>) with id Uuid::v5(T.id, step):
//   "started"                                   AIProcessingStarted
//   "iter:<n>:thinking", "iter:<n>:call:<k>"     ThinkingGenerated + ToolCalled: the model's answer of
//                                               iteration n, ONE all-or-nothing batch, written before
//                                               any tool runs
//   "iter:<n>:effect:<k>"                        what tool k wrote (MessageGenerated, MemoryStored, ...)
//   "iter:<n>:result:<k>"                        ToolCompleted
//   "iter:<n>:final" + "completed"               a text answer without tool calls: MessageGenerated and
//                                               AIProcessingCompleted(end_turn), one batch
//   "completed" / "failed"                       AIProcessingCompleted / AIProcessingFailed
// On (re)delivery the run's events are read back from the session: a recorded iteration is rebuilt
// (not sent to the model again), a recorded tool result is reused (the tool does not run again), an
// effect re-appended with its deterministic id is a no-op (200), and a finished run is just acked.
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "engram/core/result.h"
#include "engram/events/event.h"
#include "engram/llm/llm.h"
#include "engram/processor/processor.h"

namespace engram::nats {
class Connection;
}

namespace engram::ai {

struct AgentOptions {
    std::string event_store_url = "http://127.0.0.1:8080";
    std::string api_token;
    std::string source = "ai-processor";  // metadata.source
    int max_iterations = 15;
    std::string provider_kind = "offline";  // AIProcessingStarted.provider: openai-compatible | offline
    std::string model;                      // reported model name (default for the run)
    // A provider for one run (providers are not thread-safe); model_override = TriggerReceived.model or "".
    std::function<std::unique_ptr<llm::Provider>(const std::string& model_override)> make_provider;
    std::shared_ptr<nats::Connection> nats;  // recall (may be null)
    std::chrono::milliseconds recall_timeout{5000};
    std::size_t history_messages = 20;  // conversation messages given to the model
};

class Agent {
public:
    explicit Agent(AgentOptions o);
    // Runs (or resumes) the run of `trigger`. Ok = done (completed, failed and recorded, or nothing to
    // do); Error = the event store could not be read/written: retry later (the run resumes).
    Status run(const events::Event& trigger);
    processor::Handler handler();

private:
    AgentOptions o_;
};

// The system prompt (exposed for tests).
std::string system_prompt(const std::string& fast_memory_summary, const nlohmann::json& history);

}  // namespace engram::ai
