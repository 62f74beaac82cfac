#include "webchat.h"

#include "ingress.h"

#include "engram/core/json.h"
#include "engram/core/text.h"
#include "engram/core/uuid.h"
#include "engram/http/url.h"
#include "engram/log/log.h"
#include "engram/metrics/metrics.h"
#include "signature.h"
#include "webchat_assets.h"

#include <openssl/rand.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <limits>
#include <cctype>
#include <atomic>
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
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace engram::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;
using nlohmann::json;

void add_webchat_settings(config::Spec& s) {
    s.add({"WEBCHAT_ENABLED", "serve the web chat at / (false: a gateway reachable by strangers offers no chat)", "true", false,
           config::one_of({"true", "false"})});
    s.add({"WEBCHAT_SECRET",
           "key signing web chat session cookies (at least 16 characters); unset = a random key per process, "
           "so sessions end when the gateway restarts",
           "", false,
           [](const std::string& v) -> std::optional<std::string> {
               if (v.size() < 16) return "must be at least 16 characters long";
               return std::nullopt;
           },
           true});
}

namespace {

constexpr const char* kCookie = "engram_chat";

constexpr auto kConnectTimeout = std::chrono::seconds(10);
// The store sends a comment every 15 s (by default); this much silence means the upstream is gone,
// and closing the browser's stream makes its EventSource reconnect with Last-Event-ID.
constexpr auto kUpstreamIdle = std::chrono::seconds(60);

bool valid_message_id(const std::string& id) {
    if (id.empty() || id.size() > 64) return false;
    for (char c : id)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' && c != ':') return false;
    return true;
}

bool is_position(const std::string& s) {
    if (s.empty() || s.size() > 18) return false;
    for (char c : s)
        if (c < '0' || c > '9') return false;
    return true;
}

std::string random_secret() {
    std::array<unsigned char, 32> b{};
    if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) throw std::runtime_error("RAND_bytes failed");
    static const char* hex = "0123456789abcdef";
    std::string s;
    for (auto c : b) {
        s.push_back(hex[c >> 4]);
        s.push_back(hex[c & 15]);
    }
    return s;
}

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

// ---------------------------------------------------------------------------------------------------
// The SSE proxy: one asynchronous upstream request per browser stream, all on Core's one thread, so
// an open chat holds no server worker (nor a thread of its own) for its lifetime, and a browser leaving
// (Stream::on_close) aborts its upstream at once instead of at the store's next keep-alive.

struct Core {
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

class Proxy : public std::enable_shared_from_this<Proxy> {
public:
    Proxy(Core& core, std::shared_ptr<http::Responder> res, std::string target, std::string session)
        : core_(core), res_(std::move(res)), target_(std::move(target)), session_(std::move(session)) {}
    ~Proxy() {
        if (out_)
            out_->close();
        else if (res_)
            res_->respond(error(503, "unavailable", "the event stream ended before it started"));
        core_.active.fetch_sub(1);
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
        out_ = res_->start_stream(
            200, "text/event-stream",
            {{"Cache-Control", "no-store"}, {"X-Accel-Buffering", "no"}, {"X-Content-Type-Options", "nosniff"}});
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

    Core& core_;
    std::shared_ptr<http::Responder> res_;
    std::string target_;
    std::string session_;
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

// ---------------------------------------------------------------------------------------------------

struct WebChat::Impl {
    AppendFn append;
    std::shared_ptr<spdlog::logger> log = log::get("webchat");
    std::string secret;
    bool enabled = true;
    std::unique_ptr<Core> core;
    metrics::Counter* accepted = nullptr;
    metrics::Counter* rejected = nullptr;
    std::vector<std::pair<const WebAsset*, std::string>> etags;

    std::string sign(const std::string& uuid) const {
        return uuid + "." + hmac_sha256_hex(secret, "engram-webchat-session-v1:" + uuid);
    }

    // The session UUID of a verified `engram_chat` cookie; nullopt when absent or forged.
    std::optional<std::string> session_of(const http::Request& req) const {
        std::string_view all = req.headers.count("cookie") ? std::string_view(req.headers.at("cookie")) : std::string_view();
        while (!all.empty()) {
            auto semi = all.find_first_of(";,");
            std::string part = trim(all.substr(0, semi));
            all = semi == std::string_view::npos ? std::string_view() : all.substr(semi + 1);
            auto eq = part.find('=');
            if (eq == std::string::npos || trim(std::string_view(part).substr(0, eq)) != kCookie) continue;
            std::string value = trim(std::string_view(part).substr(eq + 1));
            auto dot = value.find('.');
            if (dot == std::string::npos) continue;
            std::string uuid = value.substr(0, dot);
            auto parsed = Uuid::parse(uuid);
            if (!parsed || parsed->str() != uuid) continue;
            if (constant_time_equal(value, sign(uuid))) return uuid;
        }
        return std::nullopt;
    }

    std::string cookie_header(const std::string& value, const http::Request& req) const {
        std::string c = std::string(kCookie) + "=" + value + "; Path=/; Max-Age=31536000; HttpOnly; SameSite=Strict";
        // Behind a TLS-terminating proxy the cookie must never travel in clear afterwards.
        if (req.header("x-forwarded-proto") == "https") c += "; Secure";
        return c;
    }

    http::Response reject(int status, std::string_view code, std::string_view detail) {
        rejected->inc();
        return error(status, code, detail);
    }

    static http::Response unauthorized() {
        return error(401, "unauthorized", "no valid web chat session cookie: open the chat page (/) to get one");
    }

    http::Response asset(const http::Request& req, const WebAsset& a, const std::string& etag) {
        http::Response r;
        r.content_type = std::string(a.content_type);
        r.headers = {{"X-Content-Type-Options", "nosniff"}, {"Referrer-Policy", "no-referrer"}};
        if (a.path != "/") {
            r.headers.insert(r.headers.end(), {{"ETag", etag}, {"Cache-Control", "no-cache"}});
            if (req.header("if-none-match") == etag)
                r.status = 304;
            else
                r.body = std::string(a.body);
            return r;
        }
        // The page: never cached (it may carry a Set-Cookie), never framed, scripts only from here.
        r.body = std::string(a.body);
        r.headers.insert(r.headers.end(), {{"Cache-Control", "no-store"},
                                           {"Content-Security-Policy",
                                            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"},
                                           {"X-Frame-Options", "DENY"}});
        // A browser without a (valid) session gets a fresh one.
        if (!session_of(req)) r.headers.emplace_back("Set-Cookie", cookie_header(sign(Uuid::v4().str()), req));
        return r;
    }

    http::Response post_message(const http::Request& req) {
        auto uuid = session_of(req);
        if (!uuid) {
            rejected->inc();
            return unauthorized();
        }
        auto ct = req.header("content-type");
        if (ct.rfind("application/json", 0) != 0)
            return reject(415, "unsupported_media_type", "send the message as Content-Type: application/json");
        if (req.body.size() > kMaxBodyBytes)
            return reject(413, "payload_too_large",
                          "a chat message body is limited to " + std::to_string(kMaxBodyBytes) + " bytes");
        auto parsed = parse_json(req.body, "the body");
        if (!parsed) return reject(400, "invalid_json", parsed.error().detail);
        const json& body = *parsed;
        if (!body.is_object()) return reject(400, "invalid_request", "the body must be a JSON object {\"id\", \"text\"}");
        if (!body.contains("id") || !body["id"].is_string() || !valid_message_id(body["id"].get<std::string>()))
            return reject(400, "invalid_request",
                          "field 'id' must be a string of 1 to 64 letters, digits or -_.: (a UUID made by the page)");
        if (!body.contains("text") || !body["text"].is_string() || trim(body["text"].get<std::string>()).empty())
            return reject(400, "invalid_request", "field 'text' must be a non-empty string");
        const auto text = body["text"].get<std::string>();
        if (utf8_length(text) > kMaxTextChars)
            return reject(400, "invalid_request", "field 'text' is longer than " + std::to_string(kMaxTextChars) + " characters");

        const std::string msg_id = body["id"].get<std::string>();
        const std::string session = "session:web:" + *uuid;
        const std::string user = "web:" + *uuid;
        auto id = Uuid::v5(ingress_ns(), "web:" + *uuid + ":" + msg_id).str();
        json ev = {
            {"id", id},
            {"type", "MessageReceived"},
            {"aggregate_id", session},
            {"data", {{"channel", "web"}, {"text", text}, {"user_id", user}, {"session_id", session}, {"message_id", msg_id}}},
            {"metadata", {{"source", "gateway:web"}, {"correlation_id", id}, {"user_id", user}, {"session_id", session}}}};
        auto r = append(ev);
        if (!r) {
            const auto& e = r.error();
            if (e.code == "unavailable") return reject(503, "unavailable", e.detail);
            if (e.code == "id_conflict")
                return reject(409, "id_conflict", "this message id was already used for a different text");
            if (e.code == "refused") return reject(400, "invalid_request", e.detail);  // e.g. U+0000 in the text
            return reject(500, e.code, e.detail);
        }
        accepted->inc();
        return with_headers(http::Response::json(r->first, {{"event_id", id},
                                                            {"message_id", msg_id},
                                                            {"session_id", session},
                                                            {"position", r->second["events"][0]["position"]}}),
                            {{"Cache-Control", "no-store"}});
    }

    void events(const http::Request& req, const std::shared_ptr<http::Responder>& res) {
        auto uuid = session_of(req);
        if (!uuid) {
            rejected->inc();
            return res->respond(unauthorized());
        }
        // A reconnecting EventSource sends Last-Event-ID; the page itself may resume with ?after=.
        std::string after = req.header("last-event-id");
        if (after.empty()) after = req.param("after").value_or("");
        if (!after.empty() && !is_position(after))
            return res->respond(
                reject(400, "invalid_parameter", "Last-Event-ID / after must be a non-negative integer position"));
        if (core->active.fetch_add(1) >= kMaxStreams) {
            core->active.fetch_sub(1);
            return res->respond(with_headers(reject(503, "too_many_streams", "too many open web chat streams; retry later"),
                                             {{"Retry-After", "5"}}));
        }
        std::string target = "/events/stream?aggregate_id=" + http::url_encode("session:web:" + *uuid);
        if (!after.empty()) target += "&after=" + after;
        std::make_shared<Proxy>(*core, res, std::move(target), "session:web:" + *uuid)->start();
    }
};

WebChat::WebChat(const config::Values& cfg, metrics::Registry& metrics, AppendFn append) : impl_(std::make_unique<Impl>()) {
    auto& im = *impl_;
    im.append = std::move(append);
    im.enabled = cfg.get("WEBCHAT_ENABLED") != "false";
    im.secret = cfg.get("WEBCHAT_SECRET");
    if (im.secret.empty()) {
        im.secret = random_secret();
        if (im.enabled)
            im.log->warn(
                "WEBCHAT_SECRET is not set: web chat sessions are signed with a random key and end when the gateway restarts");
    }
    auto up = parse_upstream(cfg.get("EVENT_STORE_URL"));
    if (!up) throw std::invalid_argument("EVENT_STORE_URL is not an http(s) URL");
    http::Headers auth;
    if (cfg.has("ENGRAM_API_TOKEN")) auth.emplace_back("Authorization", "Bearer " + cfg.get("ENGRAM_API_TOKEN"));
    im.core = std::make_unique<Core>(im.log, *up, std::move(auth));
    im.accepted = &metrics.counter("engram_gateway_webchat_messages_total", "web chat messages by result", "result=\"accepted\"");
    im.rejected = &metrics.counter("engram_gateway_webchat_messages_total", "web chat messages by result", "result=\"rejected\"");
    Core* core = im.core.get();
    metrics.gauge_fn("engram_gateway_webchat_streams", "open web chat event streams",
                     [core] { return static_cast<double>(core->active.load()); });
    for (const auto& a : web_assets()) im.etags.emplace_back(&a, "\"" + sha256_hex(a.body).substr(0, 16) + "\"");
}

WebChat::~WebChat() = default;

std::string WebChat::sign(const std::string& session_uuid) const { return impl_->sign(session_uuid); }

std::size_t WebChat::open_streams() const { return impl_->core->active.load(); }

bool WebChat::handle(http::Request& req, const std::shared_ptr<http::Responder>& res) {
    auto& im = *impl_;
    if (!im.enabled) return false;
    const bool get = req.method == "GET" || req.method == "HEAD";
    auto only = [&](bool allowed, const char* what) {
        if (!allowed) res->respond(error(405, "method_not_allowed", std::string("use ") + what));
        return allowed;
    };
    for (const auto& [a, etag] : im.etags) {
        if (req.path != a->path) continue;
        if (!only(get, "GET")) return true;
        res->respond(im.asset(req, *a, etag));
        return true;
    }
    if (req.path == "/chat/messages") {
        if (only(req.method == "POST", "POST")) res->respond(im.post_message(req));
        return true;
    }
    if (req.path == "/chat/events") {
        if (only(get, "GET")) im.events(req, res);
        return true;
    }
    if (req.path == "/chat/session") {
        if (!only(get, "GET")) return true;
        auto uuid = im.session_of(req);
        if (!uuid)
            res->respond(im.unauthorized());
        else
            res->respond(
                with_headers(http::Response::json(200, {{"session_id", "session:web:" + *uuid}, {"user_id", "web:" + *uuid}}),
                             {{"Cache-Control", "no-store"}}));
        return true;
    }
    if (req.path.rfind("/chat/", 0) == 0 || req.path.rfind("/static/", 0) == 0) {
        res->respond(error(404, "not_found", "no route for " + req.method + " " + req.path));
        return true;
    }
    return false;
}

}  // namespace engram::gateway
