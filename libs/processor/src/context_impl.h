#pragma once
// What a handler's Context sees of the runtime: the claim of the event's partition (for the
// local lease check and the fence), the event and its attempt, the store client of the worker.
// Shared by runtime.cpp (which fills it) and context.cpp (which implements Context on it).
#include "engram/processor/processor.h"

#include <atomic>
#include <condition_variable>
#include <map>
#include <set>
#include <thread>

namespace engram::http {
class Client;
}

namespace engram::processor {

// One owned partition. The atomics are read by handlers and the fence without the runtime's
// lock; the rest is guarded by the runtime's mutex.
struct Claim {
    using Clock = std::chrono::steady_clock;
    int partition = 0;
    std::int64_t epoch = 0;
    std::atomic<bool> lost{false};       // released or taken over: nothing of ours may commit
    std::atomic<bool> releasing{false};  // being handed over (or stopping): no new work starts
    std::atomic<Clock::rep> valid_until{0};

    // The lease was renewed by a statement issued at t0: the database keeps it until at least
    // t0 + ttl; locally it counts as held for three quarters of that, so a process that froze
    // finds it expired before anyone could have taken it over.
    void renewed(Clock::time_point t0, std::chrono::milliseconds ttl) {
        valid_until.store((t0 + ttl * 3 / 4).time_since_epoch().count());
    }
    bool valid() const {
        return !lost.load() && !releasing.load() && Clock::now().time_since_epoch().count() < valid_until.load();
    }

    std::thread fetcher;
    std::condition_variable cv;  // with the runtime's mutex: room in the partition, release, stop

    // Under the runtime's mutex.
    std::map<std::uint64_t, std::int64_t> unfinished;  // stream seq -> position, fetched and not done
    std::uint64_t accepted_seq = 0;                    // last sequence fetched
    std::int64_t accepted_position = 0;
    std::uint64_t checkpoint_seq = 0;  // as claimed
    std::uint64_t committed_seq = 0;   // last checkpoint written
    std::uint64_t pending = 0;         // not yet fetched (from the cursor)
    std::size_t loaded = 0;            // bodies held
    int running = 0;                   // handlers running now
    std::set<std::string> aggregates;  // with queued work of this claim
    Clock::time_point release_deadline{};
};
using ClaimPtr = std::shared_ptr<Claim>;

struct Context::Impl {
    const Claim* claim = nullptr;
    const events::Event* event = nullptr;
    int attempt = 1;
    bool parked = false;
    http::Client* client = nullptr;
    const std::string* processor = nullptr;
    const std::string* member = nullptr;
    pg::Pool* pool = nullptr;
    std::chrono::steady_clock::time_point deadline{};
    std::function<bool()> stopping;
    metrics::Counter* fenced = nullptr;

    bool owns() const { return claim && claim->valid(); }
    Status fence(pqxx::transaction_base& tx) const;
};

}  // namespace engram::processor
