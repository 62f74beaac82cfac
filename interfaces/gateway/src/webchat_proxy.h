#pragma once
// The web chat's event streams: each browser stream is one asynchronous upstream request to the
// store's GET /events/stream, all on this object's one I/O thread, so an open chat holds no server
// worker (nor a thread of its own) for its lifetime, and a browser leaving (Stream::on_close) aborts
// its upstream at once instead of at the store's next keep-alive. Boost stays in the .cpp.
#include "engram/http/server.h"

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace engram::gateway {

class StreamProxy {
public:
    // Throws std::invalid_argument when `store_url` is not an http(s) URL. `auth` goes with every
    // upstream request (the API token).
    StreamProxy(std::shared_ptr<spdlog::logger> log, const std::string& store_url, http::Headers auth);
    // Abandons what is pending (destroy only after the http::Server has stopped).
    ~StreamProxy();
    StreamProxy(const StreamProxy&) = delete;
    StreamProxy& operator=(const StreamProxy&) = delete;

    std::size_t active() const;
    // Takes one of `limit` stream slots; false when all are taken.
    bool try_claim(std::size_t limit);
    // Proxies the store's `target` (a GET /events/stream...) into `res`, with `extra` headers on the
    // browser's stream: before the store answers, a failure is answered with a status (503/502);
    // after, the store's bytes go through as they are. Frees the claimed slot and runs `on_done`
    // when it ends, whichever way.
    void open(std::shared_ptr<http::Responder> res, std::string target, std::string session, http::Headers extra,
              std::function<void()> on_done);

    struct Core;

private:
    std::unique_ptr<Core> core_;
};

}  // namespace engram::gateway
