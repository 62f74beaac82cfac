#include "webchat_proxy.h"

#include "engram/log/log.h"

#include <openssl/ssl.h>

#include <array>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <limits>
#include <optional>
#include <stdexcept>
#include <thread>

namespace engram::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr auto kConnectTimeout = std::chrono::seconds(10);
// The store sends a comment every 15 s (by default); this much silence means the upstream is gone,
// and closing the browser's stream makes its EventSource reconnect with Last-Event-ID.
constexpr auto kUpstreamIdle = std::chrono::seconds(60);

// The event store's base URL, split for the proxy's own connections.
struct Upstream {
    bool tls = false;
    std::string host, port, host_header, prefix;
};

std::optional<Upstream> parse_upstream(const std::string& url) {
    Upstream u;
    std::string rest;
    if (url.rfind("http://", 0) == 0)
        rest = url.substr(7);
    else if (url.rfind("https://", 0) == 0)
        rest = url.substr(8), u.tls = true;
    else
        return std::nullopt;
    auto slash = rest.find('/');
    std::string authority = rest.substr(0, slash);
    if (slash != std::string::npos) u.prefix = rest.substr(slash);
    while (!u.prefix.empty() && u.prefix.back() == '/') u.prefix.pop_back();
    u.host_header = authority;
    if (!authority.empty() && authority.front() == '[') {  // [v6]:port
        auto close = authority.find(']');
        if (close == std::string::npos) return std::nullopt;
        u.host = authority.substr(1, close - 1);
        if (close + 1 < authority.size() && authority[close + 1] == ':') u.port = authority.substr(close + 2);
    } else {
        auto colon = authority.rfind(':');
        u.host = authority.substr(0, colon);
        if (colon != std::string::npos) u.port = authority.substr(colon + 1);
    }
    if (u.port.empty()) u.port = u.tls ? "443" : "80";
    if (u.host.empty()) return std::nullopt;
    return u;
}

http::Response with_headers(http::Response r, std::initializer_list<std::pair<std::string, std::string>> h) {
    for (auto& kv : h) r.headers.push_back(kv);
    return r;
}

http::Response error(int status, std::string_view code, std::string_view detail) {
    return with_headers(http::Response::error(status, code, detail), {{"Cache-Control", "no-store"}});
}

}  // namespace

struct StreamProxy::Core {
    std::shared_ptr<spdlog::logger> log;
    Upstream upstream;
    http::Headers auth;
    ssl::context tls_ctx{ssl::context::tls_client};
    std::atomic<std::size_t> active{0};
    net::io_context ioc{1};
    net::executor_work_guard<net::io_context::executor_type> work = net::make_work_guard(ioc);
    std::thread thread;

    Core(std::shared_ptr<spdlog::logger> log_, Upstream upstream_, http::Headers auth_)
        : log(std::move(log_)), upstream(std::move(upstream_)), auth(std::move(auth_)) {
        error_code ec;
        tls_ctx.set_default_verify_paths(ec);
        tls_ctx.set_verify_mode(ssl::verify_peer, ec);
        thread = std::thread([this] { ioc.run(); });
    }
    ~Core() {
        // Pending operations are abandoned: destroying the io_context destroys their handlers, and with
        // them the proxies, which close their sockets. The http::Server has stopped by then.
        work.reset();
        ioc.stop();
        if (thread.joinable()) thread.join();
    }
};

namespace {

class Proxy : public std::enable_shared_from_this<Proxy> {
public:
    Proxy(StreamProxy::Core& core, std::shared_ptr<http::Responder> res, std::string target, std::string session,
          http::Headers headers, std::function<void()> on_done)
        : core_(core),
          res_(std::move(res)),
          target_(std::move(target)),
          session_(std::move(session)),
          headers_(std::move(headers)),
          on_done_(std::move(on_done)) {}
    ~Proxy() {
        if (out_)
            out_->close();
        else if (res_)
            res_->respond(error(503, "unavailable", "the event stream ended before it started"));
        core_.active.fetch_sub(1);
        if (on_done_) on_done_();
    }

    void start() {
        net::post(core_.ioc, [self = shared_from_this()] { self->resolve(); });
    }

    // Thread-safe.
    void cancel() {
        net::post(core_.ioc, [self = shared_from_this()] { self->finish(); });
    }

private:
    template <class F>
    void with_stream(F&& f) {
        if (tls_)
            f(*tls_);
        else
            f(*plain_);
    }
    beast::tcp_stream& lowest() { return tls_ ? beast::get_lowest_layer(*tls_) : *plain_; }

    void close_socket() {
        error_code ec;
        resolver_.cancel();
        if (tls_ || plain_) {
            lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
            lowest().close();
        }
    }

    // Before the browser's stream has started, an upstream failure is answered with a status; after
    // it, the stream is closed and the browser's EventSource reconnects with Last-Event-ID.
    void fail(int status, const std::string& code, const std::string& detail) {
        if (done_) return;
        if (!out_) {
            core_.log->warn("web chat stream of {}: {}", session_, detail);
            res_->respond(error(status, code, detail));
            res_.reset();
        }
        finish();
    }

    void finish() {
        if (done_) return;
        done_ = true;
        close_socket();
        if (out_) out_->close();
    }

    void resolve() {
        if (done_) return;
        auto self = shared_from_this();
        resolver_.async_resolve(core_.upstream.host, core_.upstream.port,
                                [self](error_code ec, tcp::resolver::results_type results) {
                                    if (ec)
                                        return self->fail(503, "unavailable", "cannot resolve the event store: " + ec.message());
                                    self->connect(results);
                                });
    }

    void connect(const tcp::resolver::results_type& results) {
        if (done_) return;
        plain_.emplace(core_.ioc);
        plain_->expires_after(kConnectTimeout);
        plain_->async_connect(results, [self = shared_from_this()](error_code ec, const tcp::endpoint&) {
            if (ec) return self->fail(503, "unavailable", "cannot connect to the event store: " + ec.message());
            if (!self->core_.upstream.tls) return self->send();
            self->handshake();
        });
    }

    void handshake() {
        if (done_) return;
        tls_.emplace(std::move(*plain_), core_.tls_ctx);
        plain_.reset();
        const auto& host = core_.upstream.host;
        error_code ec;
        net::ip::make_address(host, ec);
        if (ec) SSL_set_tlsext_host_name(tls_->native_handle(), host.c_str());
        tls_->set_verify_callback(ssl::host_name_verification(host));
        tls_->async_handshake(ssl::stream_base::client, [self = shared_from_this()](error_code ec) {
            if (ec) return self->fail(503, "unavailable", "TLS handshake with the event store failed: " + ec.message());
            self->send();
        });
    }

    void send() {
        if (done_) return;
        req_.method(bhttp::verb::get);
        req_.target(core_.upstream.prefix + target_);
        req_.version(11);
        req_.set(bhttp::field::host, core_.upstream.host_header);
        req_.set(bhttp::field::user_agent, "engram-gateway-webchat");
        req_.set(bhttp::field::accept, "text/event-stream");
        req_.set(bhttp::field::cache_control, "no-cache");
        for (const auto& [k, v] : core_.auth) req_.set(k, v);
        lowest().expires_after(kConnectTimeout);
        with_stream([&](auto& s) {
            bhttp::async_write(s, req_, [self = shared_from_this()](error_code ec, std::size_t) {
                if (ec) return self->fail(503, "unavailable", "sending to the event store failed: " + ec.message());
                self->read_header();
            });
        });
    }

    void read_header() {
        if (done_) return;
        parser_.emplace();
        // A number, never boost::none: Beast 1.74 compares a Content-Length against the empty optional
        // as if it were 0, so every refusal with a JSON body (429, 503) failed as "body limit exceeded".
        parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
        with_stream([&](auto& s) {
            bhttp::async_read_header(s, buffer_, *parser_, [self = shared_from_this()](error_code ec, std::size_t) {
                if (ec) return self->fail(503, "unavailable", "reading the event store's answer failed: " + ec.message());
                self->on_header();
            });
        });
    }

    void on_header() {
        if (done_) return;
        int status = static_cast<int>(parser_->get().result_int());
        if (status != 200) {
            if (status == 429 || status == 503)  // the store's caps on streams, or its database is down
                return fail(503, "unavailable",
                            "the event store cannot open the stream now (HTTP " + std::to_string(status) + "); retry later");
            return fail(502, "bad_gateway", "the event store answered the event stream with HTTP " + std::to_string(status));
        }
        http::Headers h = {{"Cache-Control", "no-store"}, {"X-Accel-Buffering", "no"}, {"X-Content-Type-Options", "nosniff"}};
        h.insert(h.end(), headers_.begin(), headers_.end());
        out_ = res_->start_stream(200, "text/event-stream", std::move(h));
        res_.reset();
        std::weak_ptr<Proxy> weak = shared_from_this();
        out_->on_close([weak] {
            if (auto p = weak.lock()) p->cancel();
        });
        read_body();
    }

    void read_body() {
        if (done_) return;
        if (parser_->is_done()) return finish();
        parser_->get().body().data = chunk_.data();
        parser_->get().body().size = chunk_.size();
        lowest().expires_after(kUpstreamIdle);
        with_stream([&](auto& s) {
            bhttp::async_read_some(s, buffer_, *parser_,
                                   [self = shared_from_this()](error_code ec, std::size_t) { self->on_body(ec); });
        });
    }

    void on_body(error_code ec) {
        if (done_) return;
        std::size_t n = chunk_.size() - parser_->get().body().size;
        // The store's frames (id = position, event = type, data = envelope) go through byte for byte:
        // the page reads the envelope, the browser's EventSource keeps the Last-Event-ID.
        if (n > 0 && !out_->write(std::string(chunk_.data(), n))) return finish();
        if (ec == bhttp::error::need_buffer) ec = {};
        if (ec) return finish();
        read_body();
    }

    StreamProxy::Core& core_;
    std::shared_ptr<http::Responder> res_;
    std::string target_;
    std::string session_;
    http::Headers headers_;  // added to the browser's stream (a rotated cookie)
    std::function<void()> on_done_;
    tcp::resolver resolver_{core_.ioc};
    std::optional<beast::tcp_stream> plain_;
    std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
    beast::flat_buffer buffer_;
    bhttp::request<bhttp::empty_body> req_;
    std::optional<bhttp::response_parser<bhttp::buffer_body>> parser_;
    std::array<char, 16 * 1024> chunk_{};
    std::shared_ptr<http::Stream> out_;
    bool done_ = false;
};

}  // namespace

StreamProxy::StreamProxy(std::shared_ptr<spdlog::logger> log, const std::string& store_url, http::Headers auth) {
    auto up = parse_upstream(store_url);
    if (!up) throw std::invalid_argument("EVENT_STORE_URL is not an http(s) URL");
    core_ = std::make_unique<Core>(std::move(log), std::move(*up), std::move(auth));
}

StreamProxy::~StreamProxy() = default;

std::size_t StreamProxy::active() const { return core_->active.load(); }

bool StreamProxy::try_claim(std::size_t limit) {
    if (core_->active.fetch_add(1) < limit) return true;
    core_->active.fetch_sub(1);
    return false;
}

void StreamProxy::open(std::shared_ptr<http::Responder> res, std::string target, std::string session, http::Headers extra,
                       std::function<void()> on_done) {
    std::make_shared<Proxy>(*core_, std::move(res), std::move(target), std::move(session), std::move(extra), std::move(on_done))
        ->start();
}

}  // namespace engram::gateway
