#pragma once
// engram-ai-processor: the agent loop with crash-safe resume.
//
// A run answers one trigger T (TriggerReceived / MessageReceived / SessionForked: a fork re-runs the
// agent on its origin's history up to the fork position, see engram/projections/fork.h). Every event
// of the run lives on the session aggregate (MemoryStored on user:<user_id>) with id
// Uuid::v5(T.id, step):
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
//
// Fencing: an instance that lost the trigger's partition (frozen, partitioned away, or still running
// after a hand-over) may still be inside a run while the new owner runs the same trigger. Their model
// answers differ, so both must never go on. Every append to the session carries `expected_version` =
// the session's version as this run knows it (what it read, plus what it appended itself): a run
// only writes on top of exactly the log it has seen. On `version_conflict` the run reads what was
// appended meanwhile: an event of this trigger it did not write means another instance is running
// it, and the run stops with Error "fenced"; anything else (a new user message) is just traffic and
// the append is retried on the new version. An `id_conflict` (a step recorded with other content) is
// "fenced" too. Before every append, model call and tool run the run also checks that the
// partition's lease is still held (RunControl::owns). Effects on other aggregates (MemoryStored on
// user:<id>) carry no expected_version: they follow a ToolCalled batch that was appended on top of
// the run's whole view, so their content is the one every instance derives from the log.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "deltas.h"
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
    // Double-texting: "merge" answers later MessageReceived of the session that have no run yet
    // (sent within `debounce` of the trigger, or while an earlier run was in flight) in the same
    // run, recorded in AIProcessingStarted.merged_event_ids; "queue" answers each on its own.
    std::string double_texting = "merge";
    std::chrono::milliseconds debounce{1500};
    // Live pieces of each model call's answer (deltas.h), published as they stream in; empty = none.
    PublishFn publish_delta;
    DeltaOptions deltas;
};

// What a run needs from the runtime's Context, as callbacks (tests drive runs without a runtime).
struct RunControl {
    // The partition's lease is still held (Context::owns): false = write nothing, return "fenced".
    std::function<bool()> owns = [] { return true; };
    // Cut the run short before its next model call or tool run (Context::stopping): Error "stopping",
    // the run resumes from the log on the next attempt.
    std::function<bool()> stopping = [] { return false; };
};

class Agent {
public:
    explicit Agent(AgentOptions o);
    // Runs (or resumes) the run of `trigger`. Ok = done (completed, failed and recorded, or nothing to
    // do); Error "fenced" = another instance runs this trigger or the lease is lost (nothing more was
    // written); "stopping" = cut short; any other Error = the event store could not be read/written
    // (transient when it is unreachable, see processor::is_transient): retry later, the run resumes.
    Status run(const events::Event& trigger, const RunControl& control = {});
    processor::Handler handler();

private:
    AgentOptions o_;
};

// The system prompt (exposed for tests).
std::string system_prompt(const std::string& fast_memory_summary, const nlohmann::json& history);

// After a `version_conflict` on the session (exposed for tests): `after` = the session's events
// after the version the run knew. fenced when one of them belongs to this run (causation_id =
// trigger_id) and is not among the ids the run appended itself (`written`); else `version` is the
// session's version to retry on.
struct ConflictVerdict {
    bool fenced = false;
    std::int64_t version = 0;
    std::string detail;  // the foreign event, when fenced
};
ConflictVerdict judge_conflict(const std::vector<events::Event>& after, const std::string& trigger_id,
                               const std::set<std::string>& written, std::int64_t known);

// The session's version as the run knows it after an append answered with the stored versions of its
// events (exposed for tests). A created batch lands at known+1...; a replayed one (200) may lie
// further on: the events between were never seen, so the version stays and the next append's conflict
// reads them.
std::int64_t advance_version(std::int64_t known, const std::vector<std::int64_t>& stored_versions);

}  // namespace engram::ai
