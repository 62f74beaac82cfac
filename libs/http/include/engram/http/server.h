#pragma once
// HTTP/1.1 server for JSON APIs and Server-Sent Events. Boost.Beast/Asio stay behind a pimpl: this
// header costs users nothing but the standard library and nlohmann/json.
//
// Threading: `io_threads` run socket I/O only (one strand per connection); handlers run on
// `worker_threads` and may block. A handler answers through its Responder, at once or later from
// any thread. See libs/http/README.md.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace engram::http {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Request {
    std::string method;                          // "GET", "POST"...
    std::string target;                          // raw target with query
    std::string path;                            // percent-decoded path, no query
    std::map<std::string, std::string> query;    // percent-decoded ('+' = space); last one wins
    std::map<std::string, std::string> headers;  // names lower-cased; repeated headers joined with ", "
    std::string body;
    std::string remote;  // peer address "ip:port"
    int version = 11;    // 10 = HTTP/1.0, 11 = HTTP/1.1

    std::string header(std::string_view lower_name) const;          // "" when absent
    std::optional<std::string> param(std::string_view name) const;  // query parameter
};

struct Response {
    int status = 200;
    std::string body;
    std::string content_type = "application/json";
    Headers headers;  // extra headers; Content-Length and Transfer-Encoding are set by the server

    static Response json(int status, const nlohmann::json& body);
    // {"error": code, "detail": detail, ...extra}
    static Response error(int status, std::string_view code, std::string_view detail,
                          const nlohmann::json& extra = nlohmann::json::object());
    static Response text(int status, std::string body, std::string content_type = "text/plain; charset=utf-8");
};

// A long-lived response (Server-Sent Events). Thread-safe; write() never blocks: it queues and returns
// false when the client is gone or its queue exceeds ServerOptions::stream_queue_limit (then the stream
// is closed: a slow client is cut off, never slowing the writer).
// Dropping the last reference to a Stream closes it (like close()).
class Stream {
public:
    virtual ~Stream() = default;
    // Queues `chunk` (e.g. "id: 1\nevent: x\ndata: {...}\n\n"). An empty chunk is a no-op.
    virtual bool write(std::string chunk) = 0;
    // Ends the stream after what is queued has been sent (bounded by ServerOptions::idle_timeout).
    virtual void close() = 0;
    virtual bool closed() const = 0;
    // Bytes accepted by write() and not yet handed to the kernel.
    virtual std::size_t queued_bytes() const = 0;
    // Called once, when the stream ends for any reason (client gone, cut off, close(), server stop);
    // at once if already ended. Runs on an I/O thread (never inside write()/close(), so a callback may
    // take locks the writer holds), except during Server::stop() and when already ended.
    virtual void on_close(std::function<void()> cb) = 0;
};

// One per request, thread-safe, may outlive the handler call (answer later from another thread).
// Exactly one of respond()/start_stream() is used; a Responder destroyed without either answers 500.
// Later calls are ignored (start_stream() then returns an already-closed Stream).
class Responder {
public:
    virtual ~Responder() = default;
    virtual void respond(Response r) = 0;
    virtual std::shared_ptr<Stream> start_stream(int status, std::string content_type, Headers headers = {}) = 0;
};

using Handler = std::function<void(Request& req, std::shared_ptr<Responder> res)>;

// The caps are what a stranger can hold open; the defaults never bother a normal user. See the limits
// table in libs/http/README.md.
struct ServerOptions {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;            // 0 = pick a free port
    int io_threads = 2;                // socket I/O only
    int worker_threads = 16;           // handlers run here and may block (database reads)
    std::size_t body_limit = 1 << 20;  // larger body -> 413 {"error":"payload_too_large",...}, handler not called
    // A connection with no request within this is closed: kept-alive ones between requests, new ones
    // before the first; it also bounds receiving a request's header, and separately its body. An open
    // stream is never idle.
    std::chrono::milliseconds idle_timeout{60000};
    std::size_t stream_queue_limit = 4 << 20;
    // Open connections (streams included). One more is answered 503 {"error":"overloaded"} with
    // Retry-After and closed, without reading its request.
    std::size_t max_connections = 1024;
    // Requests read and waiting for a worker. One more is answered 503 {"error":"overloaded"} with
    // Retry-After (the connection stays usable), never queued without bound.
    std::size_t max_queued = 4096;
    // Requests for which this returns true run their handler on the I/O thread that read them, not
    // on a worker: one thread hand-off less, for handlers that never block (they validate, hand
    // the work on and answer through the Responder later). Empty = every handler on a worker.
    std::function<bool(const Request&)> run_inline;
};

class Server {
public:
    Server(ServerOptions opts, Handler handler);
    ~Server();  // stop()
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds and listens; throws std::runtime_error with a clear one-line message when it cannot bind.
    void start();
    // Closes the listener and all connections (streams get on_close), drops queued handler calls,
    // waits for running handlers, joins all threads; idempotent. Must not be called from a handler.
    void stop();
    std::uint16_t port() const;
    std::size_t open_streams() const;
    std::size_t open_connections() const;  // counted against max_connections (refused ones are not)
    std::size_t queued_requests() const;   // read, waiting for a worker (counted against max_queued)

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::http
