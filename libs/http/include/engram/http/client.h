#pragma once
// Blocking HTTP/1.1 client (plain or HTTPS) for tests, the CLI and services calling each other or an
// OpenAI-compatible LLM. Boost.Beast/Asio stay behind a pimpl.
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/json.h"
#include "engram/core/result.h"
#include "engram/http/server.h"  // Headers
#include "engram/http/url.h"

namespace engram::http {

struct ClientResponse {
    int status = 0;
    std::string body;
    std::map<std::string, std::string> headers;  // names lower-case
    // The body parsed with parse_json (nesting at most max_depth levels, numbers in range); a discarded
    // value (is_discarded()) when it is not JSON or is refused.
    nlohmann::json json(int max_depth = kMaxJsonDepth) const;
    std::string header(std::string_view lower_name) const;  // "" when absent
};

struct ClientOptions {
    ClientOptions() = default;
    ClientOptions(std::chrono::milliseconds t) : timeout(t) {}  // NOLINT: ClientOptions{5000ms} reads well

    std::chrono::milliseconds timeout{10000};  // whole request: connect, send and receive
    Headers default_headers;                   // sent with every request (e.g. Authorization)
    bool verify_tls = true;                    // verify the certificate chain and host name
    std::vector<std::string> redact;           // replaced by "<redacted>" in error details (e.g. a
                                               // token inside the path, as in Telegram's /bot<token>/)
    // The largest response body request() reads, and the largest event sse() buffers (one line, or
    // the joined data of one event); beyond it the Error "response_too_large" (the limit in its detail)
    // and the connection is dropped. A server cannot make the client's memory grow without bound.
    std::size_t response_limit = 16 << 20;
};

// The response_limit for clients that read pages of engram's own event store (up to 1000 events of
// up to 1 MiB each, bounded by the store's own limits): more than the default allows.
inline constexpr std::size_t kStorePageResponseLimit = std::size_t{1100} << 20;

// Blocking client for one base URL ("http://127.0.0.1:8080" or "https://host[:port][/prefix]"), reusing
// one keep-alive connection; reconnects transparently once when a reused connection turns out closed.
// Not thread-safe: one per thread.
//
// Errors are engram::Error values with code "bad_url", "connect" (resolve, TCP or TLS handshake),
// "timeout", "io", "response_too_large" (over ClientOptions::response_limit) or "cancelled", and a
// detail naming the host. Any `access_token` query parameter is shown as "<redacted>" in details.
class Client {
public:
    explicit Client(std::string base_url, ClientOptions opts = {});
    ~Client();
    Client(Client&&) noexcept;
    Client& operator=(Client&&) noexcept;

    // path_and_query is appended to the base URL's prefix: "/events?after=3".
    Result<ClientResponse> request(std::string_view method, std::string_view path_and_query, std::string_view body = {},
                                   const Headers& headers = {});
    Result<ClientResponse> get(std::string_view path, const Headers& h = {});
    Result<ClientResponse> post_json(std::string_view path, const nlohmann::json& body, const Headers& h = {});

    // Server-Sent Events: GET path, calls on_event(id, event, data) for each event until it returns
    // false, the timeout since the last byte passes, or the server closes. Returns the status (also for
    // a non-2xx answer, returned as soon as its header is read; its body is dropped), or an Error (code
    // "timeout"/"connect"/"io"/"response_too_large"); the idle timeout passing is the Error "timeout".
    // `id` is the last event id seen (SSE rules), `event` defaults to "message", multi-line data is
    // joined with '\n'; lines may end with CR LF, LF or CR. Uses its own connection, closed after.
    Result<int> sse(std::string_view path, const Headers& h,
                    const std::function<bool(const std::string& id, const std::string& event, const std::string& data)>& on_event,
                    std::chrono::milliseconds idle_timeout);

    // A response read as it arrives (a model's streamed answer): sends the request, then calls
    // on_body(head, bytes) with each piece of a 2xx body as it is read (any split), until it returns
    // false or the body ends; returns the head (status, headers; body empty). A non-2xx body is read
    // whole into the returned body instead (up to response_limit, "response_too_large" beyond), or not
    // at all when !read_error_body. The body is not bounded here: the callback keeps what it wants.
    // A framed body cut short is returned with the header "x-engram-truncated: 1". Errors as sse().
    // `idle_timeout` bounds each wait for bytes; ClientOptions::timeout bounds connecting and the head.
    // Uses its own connection, closed after.
    using BodyCallback = std::function<bool(const ClientResponse& head, std::string_view bytes)>;
    Result<ClientResponse> stream(std::string_view method, std::string_view path, std::string_view body, const Headers& headers,
                                  const BodyCallback& on_body, std::chrono::milliseconds idle_timeout,
                                  bool read_error_body = true);

    // Drops the kept-alive connection (the next request connects anew).
    void disconnect();
    // The one thread-safe member: makes the request in progress (e.g. a long poll) and every later
    // one fail at once with the Error "cancelled". For stopping a thread that owns the client.
    void cancel();
    // Number of TCP connections this client has opened so far (for tests and metrics).
    std::size_t connections_opened() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::http
