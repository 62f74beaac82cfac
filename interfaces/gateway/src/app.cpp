#include "app.h"

#include "engram/core/json.h"
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/http/server.h"
#include "engram/log/log.h"
#include "engram/metrics/metrics.h"
#include "ingress.h"
#include "signature.h"
#include "telegram.h"
#include "webchat.h"

#include <chrono>

namespace engram::gateway {

config::Spec config_spec() {
    config::Spec s;
    s.add({"GATEWAY_LISTEN", "host:port the gateway listens on", "127.0.0.1:8081", false, config::listen_address()});
    s.add({"EVENT_STORE_URL", "the event store the gateway appends to", "http://127.0.0.1:8080", false,
           config::url({"http", "https"})});
    s.add({"ENGRAM_API_TOKEN", "bearer token: required from clients when set, and sent to the store", "", false, nullptr, true});
    s.add({"WEBHOOK_SECRETS", "HMAC secrets of signed webhooks: source=secret,other=secret2", "", false,
           [](const std::string& v) -> std::optional<std::string> {
               if (parse_secrets(v)) return std::nullopt;
               return "must be a list source=secret,source2=secret2";
           },
           true});
    s.add({"WEBHOOK_MAX_SKEW_S", "how far a webhook's X-Webhook-Timestamp may be from now (replays are refused)", "300", false,
           config::int_range(1, 86400)});
    telegram::add_settings(s);
    add_webchat_settings(s);
    config::add_logging(s);
    return s;
}

namespace {

constexpr std::size_t kBodyLimit = 1 << 20;

}  // namespace

struct App::Impl {
    config::Values cfg;
    std::function<std::int64_t()> now_s;
    std::shared_ptr<spdlog::logger> log = log::get("gateway");
    metrics::Registry metrics;
    std::map<std::string, std::string> secrets;
    std::unique_ptr<WebChat> webchat;  // declared before `server`: destroyed after it has stopped
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

    bool authorized(const http::Request& req) const {
        if (!cfg.has("ENGRAM_API_TOKEN")) return true;
        auto h = req.header("authorization");
        return h.rfind("Bearer ", 0) == 0 && constant_time_equal(h.substr(7), cfg.get("ENGRAM_API_TOKEN"));
    }

    void handle(http::Request& req, const std::shared_ptr<http::Responder>& res) {
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
        if (!authorized(req))
            return res->respond(reject(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required"));
        if (req.path == "/trigger") {
            if (req.method != "POST") return res->respond(http::Response::error(405, "method_not_allowed", "use POST"));
            return res->respond(trigger(req));
        }
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

    http::Response trigger(http::Request& req) {
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
        std::string session = str("session_id").value_or("");
        if (!session.empty() && session.rfind("session:", 0) != 0) session = "session:api:" + session;
        auto key = req.header("idempotency-key");
        if (key.size() > 256) return reject(400, "invalid_request", "the Idempotency-Key header is longer than 256 characters");
        Uuid id =
            key.empty() ? Uuid::v4() : Uuid::v5(ingress_ns(), "trigger:" + *str("source") + ":" + *str("user_id") + ":" + key);
        // A new session without a key gets a random id; with a key, a stable one (the retry lands in
        // the same session).
        if (session.empty())
            session = "session:api:" + (key.empty() ? Uuid::v4() : Uuid::v5(ingress_ns(), "session:" + id.str())).str();
        nlohmann::json ev = {
            {"id", id.str()},
            {"type", "TriggerReceived"},
            {"aggregate_id", session},
            {"data",
             {{"source", *str("source")}, {"user_id", *str("user_id")}, {"session_id", session}, {"message", *str("message")}}},
            {"metadata",
             {{"source", "gateway:trigger"},
              {"correlation_id", id.str()},
              {"user_id", *str("user_id")},
              {"session_id", session}}}};
        auto r = append(ev);
        if (!r) return from_error(r.error());
        accepted.inc();
        return http::Response::json(
            r->first, {{"session_id", session}, {"event_id", id.str()}, {"position", r->second["events"][0]["position"]}});
    }

    http::Response webhook(const std::string& source, http::Request& req) {
        auto it = secrets.find(source);
        if (source.empty() || it == secrets.end())
            return reject(404, "not_found", "no webhook source '" + source + "' is configured");
        auto sig = req.header("x-signature-256");
        if (sig.rfind("sha256=", 0) != 0)
            return reject(401, "unauthorized", "missing or malformed X-Signature-256 header (expected sha256=<hex>)");
        if (!constant_time_equal(sig.substr(7), hmac_sha256_hex(it->second, req.body)))
            return reject(401, "unauthorized", "the X-Signature-256 signature does not match the body");
        auto ts_text = req.header("x-webhook-timestamp");
        std::int64_t ts = 0;
        try {
            std::size_t used = 0;
            ts = std::stoll(ts_text, &used);
            if (used != ts_text.size()) throw std::invalid_argument("x");
        } catch (...) {
            return reject(401, "unauthorized", "missing or malformed X-Webhook-Timestamp header (Unix seconds)");
        }
        auto skew = cfg.get_int("WEBHOOK_MAX_SKEW_S");
        if (std::llabs(now_s() - ts) > skew)
            return reject(
                401, "unauthorized",
                "X-Webhook-Timestamp is more than " + std::to_string(skew) + " s away from now (a replay, or a clock problem)");
        // The payload is stored two levels down (data.payload): it keeps what is left of the limit.
        auto payload = parse_json(req.body, "the body", kMaxJsonDepth - 2);
        if (!payload) return reject(400, "invalid_json", payload.error().detail);
        std::string delivery = req.header("x-delivery-id");
        if (delivery.empty()) delivery = req.header("x-github-delivery");
        if (delivery.empty()) delivery = sha256_hex(req.body);
        if (delivery.size() > 256) return reject(400, "invalid_request", "the delivery id is longer than 256 characters");
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
    if (impl_->cfg.has("WEBHOOK_SECRETS")) impl_->secrets = *parse_secrets(impl_->cfg.get("WEBHOOK_SECRETS"));
    impl_->webchat = std::make_unique<WebChat>(impl_->cfg, impl_->metrics,
                                               [im = impl_.get()](const nlohmann::json& e) { return im->append(e); });
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
    if (impl_ && impl_->server) impl_->server->stop();
    if (impl_ && impl_->telegram) impl_->telegram->stop();
}

std::uint16_t App::port() const { return impl_->server ? impl_->server->port() : 0; }

std::string App::url() const {
    return "http://" + config::parse_listen(impl_->cfg.get("GATEWAY_LISTEN"))->host + ":" + std::to_string(port());
}

}  // namespace engram::gateway
