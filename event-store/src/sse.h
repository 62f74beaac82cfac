#pragma once
// Server-Sent Events per aggregate: catch-up from the log, then live events from one in-process
// fan-out fed by the writer's commits (never one database poll per client).
//
// Threading: publish() is called by the writer thread and only queues; one fan-out thread formats
// each event once and writes it to the matching streams (Stream::write never blocks: a client whose
// queue overflows is cut off). Catch-up runs on the HTTP worker that accepted the request.
#include "engram/events/event.h"
#include "engram/http/server.h"

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace engram::store {
class Reader;
}
namespace engram::metrics {
class Registry;
}

namespace engram::event_store {

class SseHub {
public:
    SseHub(store::Reader& reader, metrics::Registry& metrics, std::chrono::milliseconds keepalive);
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
};

}  // namespace engram::event_store
