#pragma once
// Server-Sent Events per aggregate: catch-up from the log, then live events from one in-process
// fan-out fed by the writer's commits (never one database poll per client).
//
// Threading: publish() is called by the writer thread and only queues; one fan-out thread formats
// each event once and writes it to the matching streams (Stream::write never blocks: a client whose
// queue overflows is cut off). Catch-up runs on the HTTP worker that accepted the request.
//
// Caps: at most `max_streams` streams open at once (one more: 503 too_many_streams) and at most
// `max_per_client` from one remote address (one more: 429 too_many_client_streams), both with
// Retry-After. The gateway's web chat proxies every browser's stream from its own one address, so
// the per-client default stays above the gateway's own cap on web chat streams.
#include "engram/events/event.h"
#include "engram/http/server.h"

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

namespace engram::store {
class Reader;
}
namespace engram::metrics {
class Counter;
class Registry;
}  // namespace engram::metrics

namespace engram::event_store {

class SseHub {
public:
    struct Limits {
        std::size_t max_streams = 512;
        std::size_t max_per_client = 320;
    };
    SseHub(store::Reader& reader, metrics::Registry& metrics, std::chrono::milliseconds keepalive, Limits limits);
    ~SseHub();
    void start();
    void stop();

    // From the writer's commit listener: queue the events for fan-out.
    void publish(const std::vector<events::Event>& evs);

    // Handles GET /events/stream (parameters already authorised).
    void serve(http::Request& req, const std::shared_ptr<http::Responder>& res);

    std::size_t clients() const;
    static std::string frame(const events::Event& e);

private:
    struct Subscriber;
    void run();
    void remove(const std::shared_ptr<Subscriber>& s);
    // Takes a place for one more stream of `client` (a remote address), or gives the refusal.
    std::optional<http::Response> reserve(const std::string& client);
    void release(const std::string& client);

    store::Reader& reader_;
    std::chrono::milliseconds keepalive_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::vector<events::Event>> pending_;
    std::unordered_map<std::string, std::vector<std::shared_ptr<Subscriber>>> by_aggregate_;
    std::size_t count_ = 0;
    std::int64_t last_seen_ = 0;  // last position committed through this process (guarded by mu_)
    bool stopping_ = false;
    std::thread thread_;

    // The places taken by open (or opening) streams, by remote address. A mutex of its own, taken
    // inside mu_ (remove) or alone (reserve, a Subscriber destroyed wherever its last reference goes).
    const Limits limits_;
    std::mutex places_mu_;
    std::size_t places_ = 0;
    std::unordered_map<std::string, std::size_t> places_by_client_;
    metrics::Counter* refused_global_ = nullptr;
    metrics::Counter* refused_client_ = nullptr;
};

}  // namespace engram::event_store
