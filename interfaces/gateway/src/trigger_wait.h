#pragma once
// POST /trigger?wait=N: the answer waits for the run the trigger starts, so a script can use the
// assistant like a function. One thread follows every waiting trigger by reading its session's
// events from the store (what the log says, nothing else: a waiter that gives up or a gateway that
// restarts loses nothing, the run goes on and its answer is delivered as usual).
//
// Bounded: at most `max_waits` requests wait at once; the handler reserves a slot before it writes
// anything, and a request over the cap is refused (429) with nothing written.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "engram/http/server.h"

namespace spdlog {
class logger;
}
namespace engram::metrics {
class Registry;
}

namespace engram::gateway {

struct TriggerWaitOptions {
    std::string store_url;
    http::Headers store_headers;
    std::size_t max_waits = 256;
    std::chrono::milliseconds poll{200};
};

// What a finished run says, folded from the session's events after the trigger (pure: tested alone).
struct RunOutcome {
    std::string run_id;
    std::string state = "pending";                      // pending (no run seen yet), running, completed, failed
    nlohmann::json messages = nlohmann::json::array();  // {"text", "event_id", "position"} of its MessageGenerated
    nlohmann::json detail = nlohmann::json::object();   // stop_reason / reason, detail
    bool finished() const { return state == "completed" || state == "failed"; }
};
// Folds one event of the session into the outcome of trigger `trigger_id`'s run.
void fold_run_event(RunOutcome& run, const std::string& trigger_id, const nlohmann::json& event);

class TriggerWaits {
public:
    TriggerWaits(TriggerWaitOptions o, std::shared_ptr<spdlog::logger> log, metrics::Registry& m);
    ~TriggerWaits();  // stop()
    TriggerWaits(const TriggerWaits&) = delete;
    TriggerWaits& operator=(const TriggerWaits&) = delete;

    // Takes a slot for one waiting request; false when all are taken.
    bool reserve();
    void unreserve();  // gives back a slot that wait() will not use (the append failed)
    // Uses the reserved slot: answers `res` with `accepted` plus the run once it finished (200), or
    // `accepted` plus what is known of the run at `deadline` (202).
    void wait(std::shared_ptr<http::Responder> res, nlohmann::json accepted, std::string session, std::string trigger_id,
              std::int64_t after_position, std::chrono::steady_clock::time_point deadline);
    // Answers every waiting request (202) and stops following; idempotent.
    void stop();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::gateway
