#pragma once
// The outbox relay: publishes every committed event, in position order, to the JetStream stream
// (docs/guarantees.md). See README.md ("Outbox relay") for the design.
#include "engram/core/strong.h"
#include "engram/events/event.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace spdlog {
class logger;
}
namespace engram::nats {
class Connection;
}
namespace engram::metrics {
class Registry;
class Counter;
}  // namespace engram::metrics

namespace engram::store {

// What NATS counts against the server's max_payload besides the envelope JSON: the headers the
// relay sends (NATS/1.0 line, Nats-Msg-Id, Engram-Position, Nats-Expected-Last-Sequence,
// Engram-Relay-Fence), at their longest.
constexpr std::size_t kPublishHeaderBytes = 224;
// The nats-server default max_payload, assumed while the store has not yet learned the real one.
constexpr std::int64_t kDefaultMaxPayload = 1024 * 1024;

// An upper bound of the published size (envelope JSON + headers) of an event not yet stored: the
// fields the store assigns (id, version, position, timestamp) at their longest.
std::size_t published_bytes_bound(const events::NewEvent& e);

class Relay {
public:
    struct Options {
        std::string database_url;
        std::string stream = "EVENTS";
        std::string subject_prefix = "events";  // subject = <prefix>.<type>.<partition>
        int partitions = 16;
        int replicas = 1;  // of the stream, when the relay creates it (a JetStream cluster: 3)                    // partition =
                           // events::partition_of(aggregate_id, partitions)
        std::size_t batch = 1000;             // events read and published per round
        std::chrono::milliseconds poll{200};  // also picks up events written by other store processes
        std::chrono::milliseconds standby_retry{1000};
        // The relay lease (table relay_lease): renewed every ttl/3, a dead holder's is taken over
        // after at most ttl; the holder stops publishing once it could not renew for 3/4 of it.
        std::chrono::milliseconds lease_ttl{5000};
    };

    Relay(Options opts, nats::Connection& nats, metrics::Registry& metrics);
    ~Relay();
    Relay(const Relay&) = delete;
    Relay& operator=(const Relay&) = delete;

    void start();
    void stop();  // releases the lease: another store process takes over at once
    // Set when the stream holds messages published from a newer timeline or lease epoch than this
    // process's database gives it: an old primary that came back. Nothing is published then.
    std::optional<std::string> fenced() const;
    // Hands the relay freshly committed events (from the commit listener): it publishes them
    // without reading them back from the database when they follow what it published last.
    void notify(const std::vector<events::Event>& committed);

    // Highest position known to be in the stream (every position at or below it is there).
    GlobalPosition published() const { return GlobalPosition(published_.load()); }
    bool active() const { return active_.load(); }  // holds the relay lock and is publishing

    // The next event is larger than the server's max_payload (the store refuses such events at
    // append, so only a server whose limit was lowered after the event was stored gets here): the
    // relay cannot publish it and, to keep the stream in position order, nothing after it either.
    // It retries every few seconds (the limit may be raised) and says so loudly meanwhile.
    struct Blocked {
        GlobalPosition position;
        std::size_t bytes = 0;
        std::int64_t max_payload = 0;
    };
    std::optional<Blocked> blocked() const;

private:
    void run();
    bool sync_with_stream();
    void block(const Blocked& b);
    void unblock();
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::atomic<std::int64_t> published_{0};
    std::atomic<bool> active_{false};
};

}  // namespace engram::store
