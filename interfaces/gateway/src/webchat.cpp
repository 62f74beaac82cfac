#include "webchat.h"

#include "fork.h"
#include "ingress.h"

#include "engram/core/json.h"
#include "engram/core/text.h"
#include "engram/core/uuid.h"
#include "engram/http/guard.h"
#include "engram/http/url.h"
#include "engram/log/log.h"
#include "engram/metrics/metrics.h"
#include "signature.h"
#include "webchat_assets.h"
#include "webchat_cookie.h"
#include "webchat_limits.h"

#include "webchat_deltas.h"
#include "webchat_proxy.h"

#include <openssl/rand.h>

#include <array>
#include <cctype>
#include <optional>
#include <vector>

namespace engram::gateway {

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
    s.add({"WEBCHAT_COOKIE_SECURE",
           "auto: the session cookie is Secure when the request came through an https proxy (X-Forwarded-Proto or "
           "Forwarded); always: Secure every time (an https proxy that does not say so)",
           "auto", false, config::one_of({"auto", "always"})});
    s.add({"WEBCHAT_SESSION_MESSAGES_PER_MINUTE", "messages one chat session may send a minute (bursts of half as many at once)",
           "30", false, config::int_range(1, 100000)});
    s.add({"WEBCHAT_ADDRESS_MESSAGES_PER_MINUTE",
           "messages one client address (an IPv6 /64) may send a minute, all its sessions together (0 = no limit; "
           "behind a reverse proxy every browser shares the proxy's address)",
           "120", false, config::int_range(0, 1000000)});
    s.add({"WEBCHAT_SESSION_STREAMS", "event streams one chat session may hold open (tabs)", "8", false,
           config::int_range(1, 256)});
    s.add({"NATS_URL",
           "NATS server the AI processor publishes its answers' pieces on (engram.deltas.*): the web chat shows answers "
           "being written; unset = answers appear when complete",
           "", false, config::url({"nats", "tls"})});
    s.add({"WEBCHAT_ADDRESS_STREAMS", "event streams one client address may hold open (0 = no limit besides the 256 in all)",
           "64", false, config::int_range(0, 256)});
}

namespace {

// Most distinct sessions and addresses whose message budgets are tracked at once; beyond, a new one
// waits until a tracked one is idle again (memory stays bounded whatever a stranger rotates).
constexpr std::size_t kMaxTrackedKeys = 20000;

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

http::Response with_headers(http::Response r, std::initializer_list<std::pair<std::string, std::string>> h) {
    for (auto& kv : h) r.headers.push_back(kv);
    return r;
}

http::Response error(int status, std::string_view code, std::string_view detail) {
    return with_headers(http::Response::error(status, code, detail), {{"Cache-Control", "no-store"}});
}

}  // namespace

// ---------------------------------------------------------------------------------------------------

struct WebChat::Impl {
    AppendFn append;
    std::function<std::int64_t()> now_s;
    std::shared_ptr<spdlog::logger> log = log::get("webchat");
    std::optional<CookieSigner> cookies;
    bool enabled = true;
    bool always_secure = false;
    std::unique_ptr<RateLimiter> session_rate, address_rate;
    // Declared before `streams`: a proxy still pending when the StreamProxy goes releases its slots
    // into these as it is destroyed, so they must outlive it.
    std::unique_ptr<StreamCounter> session_streams, address_streams;
    std::unique_ptr<StreamProxy> streams;
    std::unique_ptr<Forks> forks;
    std::unique_ptr<DeltaHub> deltas;  // null: no NATS_URL
    metrics::Counter* accepted = nullptr;
    metrics::Counter* rejected = nullptr;
    metrics::Counter* limited = nullptr;
    std::vector<std::pair<const WebAsset*, std::string>> etags;

    // The session of a verified, unexpired `engram_chat` cookie; nullopt when absent, forged or expired.
    std::optional<SessionCookie> session_of(const http::Request& req) const {
        auto it = req.headers.find("cookie");
        if (it == req.headers.end()) return std::nullopt;
        return cookies->from_header(it->second, now_s());
    }

    bool https(const http::Request& req) const {
        if (always_secure) return true;
        // Only ever used to add Secure: a client that lies about it makes its own cookie unusable
        // over plain HTTP, nothing else.
        if (lower(req.header("x-forwarded-proto")) == "https") return true;
        return lower(req.header("forwarded")).find("proto=https") != std::string::npos;
    }

    std::string issue(const std::string& uuid, const http::Request& req) const {
        return CookieSigner::set_cookie(cookies->sign(uuid, now_s()), https(req));
    }

    // A cookie past kRotateAfter is re-issued for the same session on the response.
    http::Headers rotation(const SessionCookie& c, const http::Request& req) const {
        if (!CookieSigner::needs_rotation(c, now_s())) return {};
        return {{"Set-Cookie", issue(c.uuid, req)}};
    }
    http::Response rotated(http::Response r, const SessionCookie& c, const http::Request& req) const {
        for (auto& h : rotation(c, req)) r.headers.push_back(std::move(h));
        return r;
    }

    http::Response reject(int status, std::string_view code, std::string_view detail) {
        rejected->inc();
        return error(status, code, detail);
    }

    http::Response too_many(std::string_view code, std::string_view detail, std::chrono::seconds retry_after) {
        limited->inc();
        return with_headers(reject(429, code, detail), {{"Retry-After", std::to_string(retry_after.count())}});
    }

    static http::Response unauthorized() {
        return error(401, "unauthorized",
                     "no valid web chat session cookie (missing, forged or expired): open the chat page (/) to get one");
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
        // A browser without a valid session (none, forged or expired) gets a fresh one; an old one is rotated.
        if (auto c = session_of(req)) return rotated(std::move(r), *c, req);
        r.headers.emplace_back("Set-Cookie", issue(Uuid::v4().str(), req));
        return r;
    }

    // Both budgets, the address's first (it holds every session a stranger can mint).
    std::optional<http::Response> rate_limited(const SessionCookie& c, const http::Request& req) {
        if (auto wait = address_rate->take(address_key(req.remote)))
            return too_many("rate_limited", "too many chat messages from this address; wait a little", *wait);
        if (auto wait = session_rate->take(c.uuid))
            return too_many("rate_limited", "too many chat messages from this session; wait a little", *wait);
        return std::nullopt;
    }

    // What every POST of the chat checks first: a valid cookie, then a JSON body within the limit.
    std::optional<http::Response> refuse_post(const http::Request& req, const std::string& what,
                                              std::optional<SessionCookie>& cookie, json& body) {
        cookie = session_of(req);
        if (!cookie) {
            rejected->inc();
            return unauthorized();
        }
        // Not JSON is also what keeps cross-site forms out (they cannot send application/json).
        if (auto refused = http::require_json(req)) {
            rejected->inc();
            return with_headers(std::move(*refused), {{"Cache-Control", "no-store"}});
        }
        if (req.body.size() > kMaxBodyBytes)
            return reject(413, "payload_too_large", what + " body is limited to " + std::to_string(kMaxBodyBytes) + " bytes");
        auto parsed = parse_json(req.body, "the body");
        if (!parsed) return reject(400, "invalid_json", parsed.error().detail);
        body = std::move(*parsed);
        return std::nullopt;
    }

    http::Response post_message(const http::Request& req) {
        std::optional<SessionCookie> cookie;
        json body;
        if (auto refused = refuse_post(req, "a chat message", cookie, body)) return std::move(*refused);
        if (!body.is_object()) return reject(400, "invalid_request", "the body must be a JSON object {\"id\", \"text\"}");
        if (!body.contains("id") || !body["id"].is_string() || !valid_message_id(body["id"].get<std::string>()))
            return reject(400, "invalid_request",
                          "field 'id' must be a string of 1 to 64 letters, digits or -_.: (a UUID made by the page)");
        if (!body.contains("text") || !body["text"].is_string() || trim(body["text"].get<std::string>()).empty())
            return reject(400, "invalid_request", "field 'text' must be a non-empty string");
        const auto text = body["text"].get<std::string>();
        if (utf8_length(text) > kMaxTextChars)
            return reject(400, "invalid_request", "field 'text' is longer than " + std::to_string(kMaxTextChars) + " characters");
        // Only messages that would be stored count: they are what costs (a model run each).
        if (auto refused = rate_limited(*cookie, req)) return std::move(*refused);

        const std::string msg_id = body["id"].get<std::string>();
        const std::string& uuid = cookie->uuid;
        const std::string session = "session:web:" + uuid;
        const std::string user = "web:" + uuid;
        auto id = Uuid::v5(ingress_ns(), "web:" + uuid + ":" + msg_id).str();
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
        return rotated(with_headers(http::Response::json(r->first, {{"event_id", id},
                                                                    {"message_id", msg_id},
                                                                    {"session_id", session},
                                                                    {"position", r->second["events"][0]["position"]}}),
                                    {{"Cache-Control", "no-store"}}),
                       *cookie, req);
    }

    // POST /chat/fork {"id", "at", "prompt"?}: forks the browser's session at a position and moves the
    // browser to the fork (a cookie for the new session). The page's id makes a retry the same fork.
    http::Response post_fork(const http::Request& req) {
        std::optional<SessionCookie> cookie;
        json body;
        if (auto refused = refuse_post(req, "a fork", cookie, body)) return std::move(*refused);
        if (!body.is_object() || !body.contains("id") || !body["id"].is_string() ||
            !valid_message_id(body["id"].get<std::string>()))
            return reject(400, "invalid_request",
                          "field 'id' must be a string of 1 to 64 letters, digits or -_.: (a UUID made by the page)");
        if (auto refused = rate_limited(*cookie, req)) return std::move(*refused);  // a fork costs a model run
        projections::ForkRequest fr;
        fr.origin = "session:web:" + cookie->uuid;
        fr.source = "web";
        fr.key = "web:" + body["id"].get<std::string>();
        auto r = forks->fork(std::move(fr), body, false);
        r.headers.emplace_back("Cache-Control", "no-store");
        if (r.status != 200 && r.status != 201) {
            rejected->inc();
            return r;
        }
        accepted->inc();
        auto answer = json::parse(r.body, nullptr, false);
        const std::string prefix = "session:web:";
        auto fork = answer.is_object() ? answer.value("session_id", "") : "";
        if (fork.rfind(prefix, 0) == 0) r.headers.emplace_back("Set-Cookie", issue(fork.substr(prefix.size()), req));
        return r;
    }

    // GET /chat/history: what the browser's session inherits when it is a fork (the page renders it
    // before the session's own events, which come from /chat/events).
    http::Response history(const http::Request& req) {
        auto cookie = session_of(req);
        if (!cookie) return unauthorized();
        const std::string session = "session:web:" + cookie->uuid;
        auto evs = forks->inherited_events(session);
        if (!evs) return error(503, "unavailable", "the event store is unavailable; retry later");
        return rotated(with_headers(http::Response::json(200, {{"session_id", session}, {"inherited", std::move(*evs)}}),
                                    {{"Cache-Control", "no-store"}}),
                       *cookie, req);
    }

    void events(const http::Request& req, const std::shared_ptr<http::Responder>& res) {
        auto cookie = session_of(req);
        if (!cookie) {
            rejected->inc();
            return res->respond(unauthorized());
        }
        // A reconnecting EventSource sends Last-Event-ID; the page itself may resume with ?after=.
        std::string after = req.header("last-event-id");
        if (after.empty()) after = req.param("after").value_or("");
        if (!after.empty() && !is_position(after))
            return res->respond(
                reject(400, "invalid_parameter", "Last-Event-ID / after must be a non-negative integer position"));
        auto release = claim_stream(*cookie, req, res, true);
        if (!release) return;
        std::string target = "/events/stream?aggregate_id=" + http::url_encode("session:web:" + cookie->uuid);
        if (!after.empty()) target += "&after=" + after;
        // The proxy releases the stream slots when it ends, whichever way.
        const std::string session = "session:web:" + cookie->uuid;
        streams->open(res, std::move(target), session, rotation(*cookie, req), std::move(*release));
    }

    // GET /chat/deltas: the pieces of the session's answers as they are written (webchat_deltas.h).
    void live(const http::Request& req, const std::shared_ptr<http::Responder>& res) {
        auto cookie = session_of(req);
        if (!cookie) {
            rejected->inc();
            return res->respond(unauthorized());
        }
        // 204 tells an EventSource not to reconnect: without NATS there is nothing to wait for.
        if (!deltas) return res->respond(with_headers(http::Response::text(204, ""), {{"Cache-Control", "no-store"}}));
        auto release = claim_stream(*cookie, req, res, false);
        if (!release) return;
        deltas->open(res, "session:web:" + cookie->uuid, rotation(*cookie, req), std::move(*release));
    }

    // One session (or one address, which can mint sessions) must not take every stream there is;
    // nullopt = refused (answered). The function gives the slots back.
    std::optional<std::function<void()>> claim_stream(const SessionCookie& cookie, const http::Request& req,
                                                      const std::shared_ptr<http::Responder>& res, bool store_stream) {
        const std::string uuid = cookie.uuid, address = address_key(req.remote);
        if (!session_streams->acquire(uuid)) {
            res->respond(too_many("too_many_streams", "this chat session has too many open event streams (tabs); close one",
                                  std::chrono::seconds(5)));
            return std::nullopt;
        }
        if (!address_streams->acquire(address)) {
            session_streams->release(uuid);
            res->respond(too_many("too_many_streams", "too many open event streams from this address", std::chrono::seconds(5)));
            return std::nullopt;
        }
        std::function<void()> release = [ss = session_streams.get(), as = address_streams.get(), uuid, address] {
            ss->release(uuid);
            as->release(address);
        };
        const bool room = store_stream ? streams->try_claim(kMaxStreams) : deltas->clients() < kMaxStreams;
        if (!room) {
            release();
            res->respond(with_headers(reject(503, "too_many_streams", "too many open web chat streams; retry later"),
                                      {{"Retry-After", "5"}}));
            return std::nullopt;
        }
        return release;
    }

    static std::string lower(std::string v) {
        for (auto& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        return v;
    }
};

WebChat::WebChat(const config::Values& cfg, metrics::Registry& metrics, AppendFn append, std::function<std::int64_t()> now_s)
    : impl_(std::make_unique<Impl>()) {
    auto& im = *impl_;
    im.append = std::move(append);
    im.now_s = now_s ? std::move(now_s) : [] {
        return static_cast<std::int64_t>(
            std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    };
    im.enabled = cfg.get("WEBCHAT_ENABLED") != "false";
    std::string secret = cfg.get("WEBCHAT_SECRET");
    if (secret.empty()) {
        secret = random_secret();
        if (im.enabled)
            im.log->warn(
                "WEBCHAT_SECRET is not set: web chat sessions are signed with a random key and end when the gateway restarts");
    }
    im.cookies.emplace(std::move(secret));
    im.always_secure = cfg.get("WEBCHAT_COOKIE_SECURE") == "always";
    auto int_of = [&](const char* name, std::int64_t fallback) { return cfg.has(name) ? cfg.get_int(name) : fallback; };
    const double session_rate = static_cast<double>(int_of("WEBCHAT_SESSION_MESSAGES_PER_MINUTE", 30));
    const double address_rate = static_cast<double>(int_of("WEBCHAT_ADDRESS_MESSAGES_PER_MINUTE", 120));
    im.session_rate = std::make_unique<RateLimiter>(session_rate, session_rate / 2, kMaxTrackedKeys);
    im.address_rate = std::make_unique<RateLimiter>(address_rate, address_rate / 2, kMaxTrackedKeys);
    im.session_streams = std::make_unique<StreamCounter>(static_cast<std::size_t>(int_of("WEBCHAT_SESSION_STREAMS", 8)));
    im.address_streams = std::make_unique<StreamCounter>(static_cast<std::size_t>(int_of("WEBCHAT_ADDRESS_STREAMS", 64)));
    http::Headers auth;
    if (cfg.has("ENGRAM_API_TOKEN")) auth.emplace_back("Authorization", "Bearer " + cfg.get("ENGRAM_API_TOKEN"));
    im.forks = std::make_unique<Forks>(cfg.get("EVENT_STORE_URL"), auth, im.append);
    im.streams = std::make_unique<StreamProxy>(im.log, cfg.get("EVENT_STORE_URL"), std::move(auth));
    if (im.enabled && cfg.has("NATS_URL")) im.deltas = std::make_unique<DeltaHub>(cfg.get("NATS_URL"));
    im.accepted = &metrics.counter("engram_gateway_webchat_messages_total", "web chat messages by result", "result=\"accepted\"");
    im.rejected = &metrics.counter("engram_gateway_webchat_messages_total", "web chat messages by result", "result=\"rejected\"");
    im.limited = &metrics.counter("engram_gateway_webchat_rate_limited_total",
                                  "web chat requests refused by a per-session or per-address cap (429)");
    StreamProxy* streams = im.streams.get();
    metrics.gauge_fn("engram_gateway_webchat_streams", "open web chat event streams",
                     [streams] { return static_cast<double>(streams->active()); });
    for (const auto& a : web_assets()) im.etags.emplace_back(&a, "\"" + sha256_hex(a.body).substr(0, 16) + "\"");
}

WebChat::~WebChat() = default;

std::string WebChat::sign(const std::string& session_uuid, std::int64_t issued) const {
    return impl_->cookies->sign(session_uuid, issued);
}
std::string WebChat::sign(const std::string& session_uuid) const { return sign(session_uuid, impl_->now_s()); }

std::size_t WebChat::open_streams() const { return impl_->streams->active(); }

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
    if (req.path == "/chat/fork") {
        if (only(req.method == "POST", "POST")) res->respond(im.post_fork(req));
        return true;
    }
    if (req.path == "/chat/history") {
        if (only(get, "GET")) res->respond(im.history(req));
        return true;
    }
    if (req.path == "/chat/events") {
        if (only(get, "GET")) im.events(req, res);
        return true;
    }
    if (req.path == "/chat/deltas") {
        if (only(get, "GET")) im.live(req, res);
        return true;
    }
    if (req.path == "/chat/session") {
        if (!only(get, "GET")) return true;
        auto c = im.session_of(req);
        if (!c)
            res->respond(im.unauthorized());
        else
            res->respond(im.rotated(
                with_headers(http::Response::json(200, {{"session_id", "session:web:" + c->uuid}, {"user_id", "web:" + c->uuid}}),
                             {{"Cache-Control", "no-store"}}),
                *c, req));
        return true;
    }
    if (req.path.rfind("/chat/", 0) == 0 || req.path.rfind("/static/", 0) == 0) {
        res->respond(error(404, "not_found", "no route for " + req.method + " " + req.path));
        return true;
    }
    return false;
}

}  // namespace engram::gateway
