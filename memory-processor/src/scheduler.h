#pragma once
// The reminder scheduler of engram-memory-processor. The memory processor keeps the `reminders`
// projection (one row per session in projection_state, `next_due_at` its earliest pending reminder,
// indexed); every `poll` the scheduler asks PostgreSQL for the sessions with something due (by the
// database's clock) and appends, for each due reminder, a TriggerReceived in its session with
// `reminder_id` and the id Uuid::v5(reminder_id, "fired").
//
// Once, whatever happens: the trigger's id and content come from the reminder alone, so any
// scheduler (several instances poll alike), a restarted one, or one that crashed between its append
// and the projection catching up re-appends exactly the stored event, which the store keeps once.
// The append carries the session's version the state reflects (expected_version): when the log has
// moved on (a ReminderCancelled not folded yet, a trigger that fired meanwhile, or just traffic)
// the store refuses it, and the events since are read: one that cancels or fires the reminder
// settles it, anything else is traffic and the append is retried on the new version. So a cancelled
// reminder is not fired by a scheduler that read it before the cancel, and a busy session is not
// starved. One append per reminder: a replayed one is answered 200 by its id.
//
// Threading: one thread; start() / stop() from the owner. tick() is the thread's one round, public
// for tests.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "engram/core/result.h"

namespace engram::pg {
class Pool;
}
namespace engram::http {
class Client;
}

namespace engram::memory_processor {

struct SchedulerOptions {
    std::string database_url;
    std::string event_store_url;
    std::string api_token;
    std::chrono::milliseconds poll{1000};
    int max_sessions_per_poll = 100;  // a page of due sessions
    int max_pages_per_poll = 50;
};

class Scheduler {
public:
    explicit Scheduler(SchedulerOptions o);
    ~Scheduler();
    void start();
    void stop();

    struct Round {
        int due = 0;       // due reminders seen
        int fired = 0;     // appended (created, or found stored already)
        int deferred = 0;  // left for the next round (projection behind the log, store unreachable)
    };
    // One round: every due reminder fired or deferred. Error: the database could not be read.
    Result<Round> tick();

private:
    struct Due {
        std::string session;
        std::int64_t version;  // of the session, as the projection's row reflects it
        nlohmann::json pending;
        std::string now;  // the database's time, as due_at is written
    };
    enum class Outcome { fired, settled, deferred, unreachable };
    Result<Round> round();
    bool fire_due(const Due& d, Round& round);  // false: the store is unreachable, stop the round
    Outcome fire_one(const std::string& session, const nlohmann::json& reminder, std::int64_t& known);
    bool stopping();

    SchedulerOptions o_;
    std::unique_ptr<pg::Pool> db_;
    std::unique_ptr<http::Client> store_;
    // Reminders appended lately, not yet folded out of the projection (bounded): not re-sent every poll.
    std::map<std::string, std::chrono::steady_clock::time_point> recent_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    std::thread thread_;
};

}  // namespace engram::memory_processor
