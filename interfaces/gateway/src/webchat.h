#pragma once
// The web chat at `/`: the page, POST /chat/messages (-> MessageReceived on the browser's own
// session) and GET /chat/events (the session's events, proxied from the store's SSE stream).
//
// A browser's session comes only from its signed cookie `engram_chat=<uuid>.<hmac>`: no request can
// name another session. The chat routes sit in front of the API-token check, since a browser
// authenticates with the cookie.
//
// Caps (webchat_limits.h): messages per minute per session and per address (429 rate_limited with
// Retry-After), open streams per session and per address (429 too_many_streams), and the cookie's
// lifetime and rotation (webchat_cookie.h).
//
// Threading: event streams are proxied asynchronously on one I/O thread owned by WebChat (never a
// server worker per stream); at most `kMaxStreams` at once. A browser that goes away closes its
// upstream at once. Destroy WebChat only after the http::Server that calls handle() has stopped.
#include "engram/config/config.h"
#include "engram/core/result.h"
#include "engram/http/server.h"
#include "ingress.h"

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

namespace engram::metrics {
class Registry;
}

namespace engram::gateway {

// Adds WEBCHAT_SECRET, the caps and the cookie's Secure mode to the gateway's settings.
void add_webchat_settings(config::Spec& spec);

class WebChat {
public:
    static constexpr std::size_t kMaxStreams = 256;
    static constexpr std::size_t kMaxTextChars = 8000;      // Unicode code points of one message
    static constexpr std::size_t kMaxBodyBytes = 64 << 10;  // POST /chat/messages body

    // `now_s`: Unix seconds (cookie issue times and expiry); injected by tests.
    WebChat(const config::Values& cfg, metrics::Registry& metrics, AppendFn append,
            std::function<std::int64_t()> now_s = nullptr);
    ~WebChat();
    WebChat(const WebChat&) = delete;
    WebChat& operator=(const WebChat&) = delete;

    // Answers the web chat's routes and returns true; false for any other path.
    bool handle(http::Request& req, const std::shared_ptr<http::Responder>& res);

    // "<uuid>.<issued>.<hmac>" for a session id (a UUID), issued now or at `issued` (Unix s): the cookie
    // value; exposed for tests.
    std::string sign(const std::string& session_uuid) const;
    std::string sign(const std::string& session_uuid, std::int64_t issued) const;
    std::size_t open_streams() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::gateway
