#pragma once
// The outbox relay: publishes every committed event, in position order, to the JetStream stream
// (SPEC §5). See README.md ("Outbox relay") for the design.
#include "engram/core/strong.h"
#include "engram/events/event.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
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

class Relay {
public:
    struct Options {
        std::string database_url;
        std::string stream = "EVENTS";
        std::string subject_prefix = "events";  // subject = <prefix>.<type>
        std::size_t batch = 1000;               // events read and published per round
        std::chrono::milliseconds poll{200};    // also picks up events written by other store processes
        std::chrono::milliseconds standby_retry{1000};
    };

    Relay(Options opts, nats::Connection& nats, metrics::Registry& metrics);
    ~Relay();
    Relay(const Relay&) = delete;
    Relay& operator=(const Relay&) = delete;

    void start();
    void stop();
    // Hands the relay freshly committed events (from the commit listener): it publishes them
    // without reading them back from the database when they follow what it published last.
    void notify(const std::vector<events::Event>& committed);

    // Highest position known to be in the stream (every position at or below it is there).
    GlobalPosition published() const { return GlobalPosition(published_.load()); }
    bool active() const { return active_.load(); }  // holds the relay lock and is publishing

private:
    void run();
    bool sync_with_stream();
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::atomic<std::int64_t> published_{0};
    std::atomic<bool> active_{false};
};

}  // namespace engram::store
