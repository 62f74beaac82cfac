#include "app.h"

#include "engram/core/json.h"
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/http/guard.h"
#include "engram/http/server.h"
#include "engram/log/log.h"
#include "engram/metrics/metrics.h"
#include "fork.h"
#include "ingress.h"
#include "signature.h"
#include "telegram.h"
#include "trigger_wait.h"
#include "webchat.h"

#include <chrono>

namespace engram::gateway {

config::Spec config_spec() {
    config::Spec s;
    s.add({"GATEWAY_LISTEN", "host:port the gateway listens on", "127.0.0.1:8081", false, config::listen_address()});
    s.add({"EVENT_STORE_URL", "the event store the gateway appends to", "http://127.0.0.1:8080", false,
           config::url({"http", "https"})});
    s.add({"ENGRAM_API_TOKEN", "bearer token: required from clients when set, and sent to the store", "", false, nullptr, true});
    http::add_guard_settings(s);
    s.add({"WEBHOOK_SECRETS",
           "secrets of signed webhooks, source=secret,other=whsec_<base64>: a plain secret signs "
           "X-Signature-256 over \"<X-Webhook-Timestamp>.<body>\", a whsec_ one the Standard Webhooks headers",
           "", false,
           [](const std::string& v) -> std::optional<std::string> {
               auto p = parse_secrets(v);
               if (p) return std::nullopt;
               return "must be a list source=secret,source2=whsec_<base64> (" + p.error().detail + ")";
           },
           true});
    s.add({"GATEWAY_TRIGGER_MAX_WAITS",
           "POST /trigger?wait=N requests that may wait for their run at once (one more is refused 429; 0: no waiting)", "256",
           false, config::int_range(0, 4096)});
    s.add({"WEBHOOK_MAX_SKEW_S", "how far a webhook's signed timestamp may be from now (older requests are refused as replays)",
           "300", false, config::int_range(1, 86400)});
    telegram::add_settings(s);
    add_webchat_settings(s);
    config::add_logging(s);
    return s;
}

namespace {

constexpr std::size_t kBodyLimit = 1 << 20;
constexpr std::size_t kMaxIdLength = 256;  // user and session ids (the event schemas' limit)

// POST /trigger writes in its own namespace only: sessions session:api:<id>, users api:<id>, whose
// answers no channel delivers (the caller reads them from the log). A channel's sessions and users
// (telegram, web, email, ...) are written only by that channel's ingress, which derives them from
// what the channel authenticated; a /trigger naming them could read a user's memories into another
// conversation or make the notification processor send to any chat or address.
constexpr std::string_view kTriggerNs = "api";

Result<std::string> trigger_user(const std::string& given) {
    auto colon = given.find(':');
    if (colon == std::string::npos) return std::string(kTriggerNs) + ":" + given;
    if (std::string_view(given).substr(0, colon) == kTriggerNs && colon + 1 < given.size()) return given;
    return Error::make("namespace_not_allowed", "user_id '" + given.substr(0, 100) +
                                                    "' is outside the namespace of /trigger: use a plain id (stored as api:<id>) "
                                                    "or api:<id>; users of other channels are written only by their channel");
}

Result<std::string> trigger_session(const std::string& given) {
    const std::string prefix = "session:" + std::string(kTriggerNs) + ":";
    if (given.rfind("session:", 0) != 0) return prefix + given;
    if (given.rfind(prefix, 0) == 0 && given.size() > prefix.size()) return given;
    return Error::make("namespace_not_allowed", "session_id '" + given.substr(0, 100) +
                                                    "' is outside the namespace of /trigger: use a plain id or " + prefix +
                                                    "<id>; sessions of other channels are written only by their channel");
}

}  // namespace

struct App::Impl {
    config::Values cfg;
    std::function<std::int64_t()> now_s;
    std::shared_ptr<spdlog::logger> log = log::get("gateway");
    metrics::Registry metrics;
    http::Guard guard;
    std::map<std::string, WebhookSecret> secrets;
    ReplayGuard replays;
    std::unique_ptr<WebChat> webchat;     // declared before `server`: destroyed after it has stopped
    std::unique_ptr<TriggerWaits> waits;  // the same
    std::unique_ptr<Forks> forks;
    std::unique_ptr<http::Server> server;
    std::unique_ptr<telegram::Ingress> telegram;
    metrics::Counter& accepted =
        metrics.counter("engram_gateway_requests_total", "ingress requests by result", "result=\"accepted\"");
    metrics::Counter& rejected =
        metrics.counter("engram_gateway_requests_total", "ingress requests by result", "result=\"rejected\"");

    http::Headers store_headers() const {
        http::Headers h;
        if (cfg.has("ENGRAM_API_TOKEN")) h.emplace_back("Authorization", "Bearer " + cfg.get("ENGRAM_API_TOKEN"));
        return h;
    }

    http::Response reject(int status, const std::string& code, const std::string& detail) {
        rejected.inc();
        return http::Response::error(status, code, detail);
    }
    http::Response reject(http::Response r) {
        rejected.inc();
        return r;
    }

    // Appends one event and maps the store's answer: 201/200 pass through. Only answers that no
    // retry can change are final (400/413: the event is invalid; id_conflict); everything else — the
    // store unreachable, 5xx, 401/403 (a token mismatch), 404/408/429 from a proxy — is "unavailable":
    // the caller asks its sender to retry (the derived id keeps the retry stored once) and never
    // acknowledges an input that was not stored. Details stay in the log, not in the answer.
    Result<std::pair<int, nlohmann::json>> append(const nlohmann::json& event) {
        http::Client c(cfg.get("EVENT_STORE_URL"), http::ClientOptions(std::chrono::milliseconds(10000)));
        auto r = c.post_json("/events", event, store_headers());
        if (!r) {
            log->warn("appending to the event store failed: {}", r.error().detail);
            return Error::make("unavailable", "the event store is unavailable; retry later");
        }
        if (r->status == 201 || r->status == 200) return std::make_pair(r->status, r->json());
        auto j = r->json();
        auto code = j.is_object() && j.contains("error") && j["error"].is_string() ? j["error"].get<std::string>() : "";
        if (r->status == 409 && code == "id_conflict")
            return Error::make("id_conflict", "this delivery id was already used for different content");
        if (r->status == 400 || r->status == 413) {
            // What the client sent is what the store refused (a schema limit, U+0000...): say why.
            auto why = j.is_object() && j.contains("detail") && j["detail"].is_string() ? j["detail"].get<std::string>() : "";
            return Error::make("refused", "the event store refused the event (" + std::to_string(r->status) + " " + code +
                                              (why.empty() ? "" : ": " + why) + ")");
        }
        log->warn("the event store answered HTTP {} {} to an append; the sender is asked to retry", r->status, code);
        return Error::make("unavailable", "the event store is unavailable; retry later");
    }

    http::Response from_error(const Error& e) {
        // A refused event was built from the request: the client's to fix, not a server error.
        if (e.code == "refused") return reject(400, "invalid_request", e.detail);
        int status = e.code == "unavailable" ? 503 : e.code == "id_conflict" ? 409 : 500;
        return reject(status, e.code, e.detail);
    }

    void handle(http::Request& req, const std::shared_ptr<http::Responder>& res) {
        if (auto refused = guard.check_host(req)) return res->respond(reject(std::move(*refused)));
        if (req.path == "/healthz") return res->respond(http::Response::json(200, {{"status", "ok"}}));
        if (webchat->handle(req, res)) return;  // the browser's signed cookie, not the API token
        if (req.path.rfind("/webhooks/", 0) == 0) {
            // Webhook senders authenticate with their signature, not the API token.
            if (req.method != "POST") return res->respond(http::Response::error(405, "method_not_allowed", "use POST"));
            return res->respond(webhook(req.path.substr(10), req));
        }
        if (req.path == "/telegram/webhook") {  // Telegram authenticates with its secret header
            auto r = telegram->webhook(req);
            (r.status == 200 ? accepted : rejected).inc();
            return res->respond(std::move(r));
        }
        if (auto refused = guard.check_token(req)) return res->respond(reject(std::move(*refused)));
        if (req.path == "/trigger") {
            if (req.method != "POST") return res->respond(http::Response::error(405, "method_not_allowed", "use POST"));
            if (auto refused = http::require_json(req)) return res->respond(reject(std::move(*refused)));
            return trigger(req, res);
        }
        if (req.path.rfind("/sessions/", 0) == 0) return res->respond(session_route(req));
        if (req.path == "/metrics") {
            http::Response r;
            r.content_type = "text/plain; version=0.0.4";
            r.body = metrics.render();
            return res->respond(std::move(r));
        }
        if (req.path == "/readyz") {
            http::Client c(cfg.get("EVENT_STORE_URL"), http::ClientOptions(std::chrono::milliseconds(2000)));
            auto r = c.get("/healthz", store_headers());
            bool ok = r.ok() && r->status == 200;
            // Telegram's state is reported, not gating: /trigger and webhooks work without it.
            return res->respond(http::Response::json(
                ok ? 200 : 503, {{"status", ok ? "ready" : "not_ready"},
                                 {"checks", {{"event_store", ok ? "ok" : "unreachable"}, {"telegram", telegram->status()}}}}));
        }
        res->respond(http::Response::error(404, "not_found", "no route for " + req.method + " " + req.path));
    }

    // POST /trigger[?wait=N]: with wait (1-60 s), the answer waits for the run (TriggerWaits).
    void trigger(http::Request& req, const std::shared_ptr<http::Responder>& res) {
        int wait_s = 0;
        if (auto w = req.param("wait")) {
            auto n = parse_wait(*w);
            if (!n) return res->respond(reject(400, "invalid_parameter", n.error().detail));
            wait_s = *n;
        }
        if (wait_s > 0 && !waits->reserve())
            return res->respond(reject(429, "too_many_waits",
                                       "too many POST /trigger?wait requests are waiting (GATEWAY_TRIGGER_MAX_WAITS); nothing "
                                       "was written: retry later or without wait"));
        std::optional<Accepted> acc;
        http::Response r;
        try {
            r = trigger(req, acc);
        } catch (...) {
            if (wait_s > 0) waits->unreserve();  // the slot is never lost
            throw;
        }
        if (!acc || wait_s == 0) {
            if (wait_s > 0) waits->unreserve();
            return res->respond(std::move(r));
        }
        waits->wait(res, std::move(acc->body), acc->session, acc->event_id, acc->position,
                    std::chrono::steady_clock::now() + std::chrono::seconds(wait_s));
    }

    // POST /sessions/{id}/fork: a new session branching off {id} at a position (fork.h).
    http::Response session_route(http::Request& req) {
        const std::string prefix = "/sessions/", suffix = "/fork";
        const auto& p = req.path;
        if (p.size() <= prefix.size() + suffix.size() || p.compare(p.size() - suffix.size(), suffix.size(), suffix) != 0)
            return http::Response::error(404, "not_found",
                                         "no route for " + req.method + " " + p + " (use POST /sessions/{id}/fork)");
        if (req.method != "POST") return http::Response::error(405, "method_not_allowed", "use POST");
        if (auto refused = http::require_json(req)) return reject(std::move(*refused));
        auto body = parse_json(req.body, "the body");
        if (!body) return reject(400, "invalid_json", body.error().detail);
        auto key = req.header("idempotency-key");
        if (key.size() > 256) return reject(400, "invalid_request", "the Idempotency-Key header is longer than 256 characters");
        projections::ForkRequest fr;
        fr.origin = p.substr(prefix.size(), p.size() - prefix.size() - suffix.size());
        fr.source = "api";
        fr.key = key;
        auto r = forks->fork(std::move(fr), *body, true);
        (r.status == 200 || r.status == 201 ? accepted : rejected).inc();
        return r;
    }

    static Result<int> parse_wait(const std::string& v) {
        auto bad = [&] {
            return Error::make("invalid_parameter",
                               "query parameter 'wait' must be a number of seconds from 0 to 60 (got '" + v.substr(0, 32) + "')");
        };
        if (v.empty() || v.size() > 2) return bad();
        int n = 0;
        for (char c : v) {
            if (c < '0' || c > '9') return bad();
            n = n * 10 + (c - '0');
        }
        if (n > 60) return bad();
        return n;
    }

    struct Accepted {
        nlohmann::json body;
        std::string session, event_id;
        std::int64_t position = 0;
    };

    http::Response trigger(http::Request& req, std::optional<Accepted>& accepted_out) {
        auto parsed = parse_json(req.body, "the body");
        if (!parsed) return reject(400, "invalid_json", parsed.error().detail);
        auto& body = *parsed;
        if (!body.is_object()) return reject(400, "invalid_request", "the body must be a JSON object");
        auto str = [&](const char* k) -> std::optional<std::string> {
            if (!body.contains(k) || !body[k].is_string() || body[k].get<std::string>().empty()) return std::nullopt;
            return body[k].get<std::string>();
        };
        for (const char* k : {"source", "user_id", "message"})
            if (!str(k)) return reject(400, "invalid_request", std::string("field '") + k + "' must be a non-empty string");
        if (body.contains("session_id") && !str("session_id"))
            return reject(400, "invalid_request", "field 'session_id' must be a non-empty string when present");
        if (str("source")->size() > 64) return reject(400, "invalid_request", "field 'source' is longer than 64 characters");
        auto user = trigger_user(*str("user_id"));
        if (!user) return reject(403, user.error().code, user.error().detail);
        std::string session;
        if (auto given = str("session_id")) {
            auto s = trigger_session(*given);
            if (!s) return reject(403, s.error().code, s.error().detail);
            session = *s;
        }
        if (user->size() > kMaxIdLength || session.size() > kMaxIdLength)
            return reject(400, "invalid_request",
                          "fields 'user_id' and 'session_id' are limited to " + std::to_string(kMaxIdLength) + " characters");
        auto key = req.header("idempotency-key");
        if (key.size() > 256) return reject(400, "invalid_request", "the Idempotency-Key header is longer than 256 characters");
        Uuid id = key.empty() ? Uuid::v4() : Uuid::v5(ingress_ns(), "trigger:" + *str("source") + ":" + *user + ":" + key);
        // A new session without a key gets a random id; with a key, a stable one (the retry lands in
        // the same session).
        if (session.empty())
            session = "session:api:" + (key.empty() ? Uuid::v4() : Uuid::v5(ingress_ns(), "session:" + id.str())).str();
        nlohmann::json ev = {
            {"id", id.str()},
            {"type", "TriggerReceived"},
            {"aggregate_id", session},
            {"data", {{"source", *str("source")}, {"user_id", *user}, {"session_id", session}, {"message", *str("message")}}},
            {"metadata",
             {{"source", "gateway:trigger"}, {"correlation_id", id.str()}, {"user_id", *user}, {"session_id", session}}}};
        auto r = append(ev);
        if (!r) return from_error(r.error());
        accepted.inc();
        nlohmann::json out = {{"session_id", session},
                              {"user_id", *user},
                              {"event_id", id.str()},
                              {"position", r->second["events"][0]["position"]}};
        auto pos = out["position"].is_number_integer() ? out["position"].get<std::int64_t>() : 0;
        accepted_out = Accepted{out, session, id.str(), pos};
        return http::Response::json(r->first, std::move(out));
    }

    http::Response webhook(const std::string& source, http::Request& req) {
        auto it = secrets.find(source);
        if (source.empty() || it == secrets.end())
            return reject(404, "not_found", "no webhook source '" + source + "' is configured");
        const auto skew = cfg.get_int("WEBHOOK_MAX_SKEW_S");
        const auto now = now_s();
        auto verified = verify_webhook(
            it->second, [&](std::string_view name) { return req.header(name); }, req.body, now, skew);
        if (!verified) return reject(401, verified.error().code, verified.error().detail);
        // The payload is stored two levels down (data.payload): it keeps what is left of the limit.
        auto payload = parse_json(req.body, "the body", kMaxJsonDepth - 2);
        if (!payload) return reject(400, "invalid_json", payload.error().detail);
        std::string delivery = verified->delivery_id;  // Standard Webhooks: the signed webhook-id
        if (delivery.empty()) delivery = req.header("x-delivery-id");
        if (delivery.empty()) delivery = req.header("x-github-delivery");
        if (delivery.empty()) delivery = sha256_hex(req.body);
        if (delivery.size() > 256) return reject(400, "invalid_request", "the delivery id is longer than 256 characters");
        if (it->second.scheme == Scheme::timestamped_hmac &&
            !replays.admit(source, verified->signature, delivery, verified->timestamp, skew, now))
            return reject(401, "unauthorized",
                          "this signature was already used with another delivery id: a replayed request is not stored again");
        auto id = Uuid::v5(ingress_ns(), "webhook:" + source + ":" + delivery);
        nlohmann::json ev = {{"id", id.str()},
                             {"type", "WebhookReceived"},
                             {"aggregate_id", "webhook:" + source},
                             {"data", {{"source", source}, {"delivery_id", delivery}, {"payload", std::move(*payload)}}},
                             {"metadata", {{"source", "gateway:webhook:" + source}, {"correlation_id", id.str()}}}};
        auto r = append(ev);
        if (!r) return from_error(r.error());
        accepted.inc();
        return http::Response::json(
            r->first, {{"event_id", id.str()}, {"delivery_id", delivery}, {"position", r->second["events"][0]["position"]}});
    }
};

App::App(config::Values cfg, std::function<std::int64_t()> now_s) : impl_(std::make_unique<Impl>()) {
    impl_->cfg = std::move(cfg);
    impl_->now_s = now_s ? std::move(now_s) : [] {
        return static_cast<std::int64_t>(
            std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    };
    impl_->guard = http::Guard(http::guard_options(impl_->cfg));
    if (impl_->cfg.has("WEBHOOK_SECRETS")) impl_->secrets = *parse_secrets(impl_->cfg.get("WEBHOOK_SECRETS"));
    TriggerWaitOptions two;
    two.store_url = impl_->cfg.get("EVENT_STORE_URL");
    two.store_headers = impl_->store_headers();
    two.max_waits = static_cast<std::size_t>(impl_->cfg.get_int("GATEWAY_TRIGGER_MAX_WAITS"));
    impl_->waits = std::make_unique<TriggerWaits>(std::move(two), impl_->log, impl_->metrics);
    impl_->forks = std::make_unique<Forks>(impl_->cfg.get("EVENT_STORE_URL"), impl_->store_headers(),
                                           [im = impl_.get()](const nlohmann::json& e) { return im->append(e); });
    impl_->webchat = std::make_unique<WebChat>(
        impl_->cfg, impl_->metrics, [im = impl_.get()](const nlohmann::json& e) { return im->append(e); }, impl_->now_s);
}

App::~App() { stop(); }

Status App::start() {
    auto ts = telegram::settings_from(impl_->cfg);
    if (!ts) return ts.error();
    impl_->telegram = std::make_unique<telegram::Ingress>(
        std::move(ts.value()), [im = impl_.get()](const nlohmann::json& ev) { return im->append(ev); }, impl_->metrics);
    auto hp = config::parse_listen(impl_->cfg.get("GATEWAY_LISTEN"));
    http::ServerOptions so;
    so.host = hp->host;
    so.port = hp->port;
    so.body_limit = kBodyLimit;
    impl_->server = std::make_unique<http::Server>(
        so, [this](http::Request& req, std::shared_ptr<http::Responder> res) { impl_->handle(req, res); });
    try {
        impl_->server->start();
    } catch (const std::exception& e) {
        return Error::make("listen", e.what());
    }
    impl_->telegram->start();
    return ok();
}

void App::stop() {
    if (impl_ && impl_->waits) impl_->waits->stop();  // waiting requests hear 202 before the server closes
    if (impl_ && impl_->server) impl_->server->stop();
    if (impl_ && impl_->telegram) impl_->telegram->stop();
}

std::uint16_t App::port() const { return impl_->server ? impl_->server->port() : 0; }

std::string App::url() const {
    return "http://" + config::parse_listen(impl_->cfg.get("GATEWAY_LISTEN"))->host + ":" + std::to_string(port());
}

}  // namespace engram::gateway
