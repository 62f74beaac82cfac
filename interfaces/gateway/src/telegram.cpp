#include "telegram.h"

#include "engram/core/json.h"
#include "engram/config/chats.h"
#include "engram/core/text.h"
#include "engram/core/time.h"
#include "engram/http/client.h"
#include "engram/log/log.h"
#include "engram/metrics/metrics.h"
#include "signature.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace engram::gateway::telegram {

using nlohmann::json;

namespace {

std::shared_ptr<spdlog::logger> lg() {
    static auto l = log::get("telegram");
    return l;
}

}  // namespace

void add_settings(config::Spec& s) {
    s.add({"TELEGRAM_MODE",
           "Telegram ingress: auto (webhook when TELEGRAM_WEBHOOK_SECRET is set, else polling, when a token is set), "
           "polling, webhook or off",
           "auto", false, config::one_of({"auto", "polling", "webhook", "off"})});
    s.add({"TELEGRAM_BOT_TOKEN", "bot token from @BotFather (enables Telegram)", "", false, nullptr, true});
    s.add({"TELEGRAM_API_BASE", "Telegram Bot API base URL", "https://api.telegram.org", false, config::url({"http", "https"})});
    s.add({"TELEGRAM_WEBHOOK_SECRET",
           "secret Telegram sends in X-Telegram-Bot-Api-Secret-Token to POST /telegram/webhook (1-256 of A-Z a-z 0-9 _ -)", "",
           false,
           [](const std::string& v) -> std::optional<std::string> {
               bool okc = std::all_of(v.begin(), v.end(), [](char c) {
                   return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
               });
               if (v.size() > 256 || !okc) return "must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)";
               return std::nullopt;
           },
           true});
    s.add({"TELEGRAM_WEBHOOK_URL", "public https URL of POST /telegram/webhook; registered with setWebhook at start when set", "",
           false, config::url({"https"})});
    config::add_telegram_allowed_chats(s);
    s.add({"TELEGRAM_POLL_TIMEOUT_S", "long-polling timeout of getUpdates, seconds", "25", false, config::int_range(1, 50)});
}

Result<Settings> settings_from(const config::Values& v) {
    Settings s;
    s.token = v.get("TELEGRAM_BOT_TOKEN");
    if (v.has("TELEGRAM_API_BASE")) s.api_base = v.get("TELEGRAM_API_BASE");
    while (!s.api_base.empty() && s.api_base.back() == '/') s.api_base.pop_back();
    s.webhook_secret = v.get("TELEGRAM_WEBHOOK_SECRET");
    s.webhook_url = v.get("TELEGRAM_WEBHOOK_URL");
    auto allowed = config::telegram_allowed_chats(v);
    s.allow_all = allowed.all;
    s.allowed = std::move(allowed.ids);
    if (v.has("TELEGRAM_POLL_TIMEOUT_S")) s.poll_timeout_s = static_cast<int>(v.get_int("TELEGRAM_POLL_TIMEOUT_S"));
    std::string mode = v.has("TELEGRAM_MODE") ? v.get("TELEGRAM_MODE") : "auto";
    if (mode == "auto") mode = s.token.empty() ? "off" : s.webhook_secret.empty() ? "polling" : "webhook";
    s.mode = mode;
    if (mode != "off" && s.token.empty())
        return Error::make("config", "invalid configuration: TELEGRAM_MODE=" + mode + " needs TELEGRAM_BOT_TOKEN");
    if (mode == "webhook" && s.webhook_secret.empty())
        return Error::make(
            "config",
            "invalid configuration: TELEGRAM_MODE=webhook needs TELEGRAM_WEBHOOK_SECRET (requests are checked against it)");
    return s;
}

// ---------------------------------------------------------------------------------------------

struct Ingress::Impl {
    Settings s;
    AppendFn append;
    metrics::Counter& stored;
    metrics::Counter& duplicates;
    metrics::Counter& refused;
    metrics::Counter& ignored;
    metrics::Counter& dropped;
    metrics::Counter& conflicts;

    mutable std::mutex mu;
    std::condition_variable cv;
    bool stopping = false;
    std::string state = "starting";
    std::unique_ptr<http::Client> poll_client;  // owned by the poller thread; cancel() is thread-safe
    std::thread poller;

    Impl(Settings st, AppendFn a, metrics::Registry& m)
        : s(std::move(st)),
          append(std::move(a)),
          stored(m.counter("engram_gateway_telegram_updates_total", "Telegram updates by outcome", "outcome=\"stored\"")),
          duplicates(m.counter("engram_gateway_telegram_updates_total", "Telegram updates by outcome", "outcome=\"duplicate\"")),
          refused(m.counter("engram_gateway_telegram_updates_total", "Telegram updates by outcome", "outcome=\"refused\"")),
          ignored(m.counter("engram_gateway_telegram_updates_total", "Telegram updates by outcome", "outcome=\"ignored\"")),
          dropped(m.counter("engram_gateway_telegram_updates_total", "Telegram updates by outcome", "outcome=\"dropped\"")),
          conflicts(m.counter("engram_gateway_telegram_poll_conflicts_total", "getUpdates answered 409 Conflict")) {}

    void set_state(const std::string& st) {
        std::lock_guard lk(mu);
        state = st;
    }

    // Waits up to d, or until stop(); false when stopping.
    bool pause(std::chrono::milliseconds d) {
        std::unique_lock lk(mu);
        cv.wait_for(lk, d, [&] { return stopping; });
        return !stopping;
    }
    bool is_stopping() {
        std::lock_guard lk(mu);
        return stopping;
    }

    // Every Telegram request carries the token in its path: keep it out of error details.
    http::ClientOptions client_options(std::chrono::milliseconds timeout) const {
        http::ClientOptions o(timeout);
        o.redact = {s.token};
        return o;
    }

    // At most once: a crash between the commit and this call, or a failed call, leaves the stranger
    // without an answer rather than risk answering twice (their next messages are only recorded).
    void send_refusal(const std::string& chat_id) {
        http::Client c(s.api_base, client_options(std::chrono::milliseconds(10000)));
        auto r = c.post_json("/bot" + s.token + "/sendMessage", {{"chat_id", json::parse(chat_id)}, {"text", kRefusalText}});
        if (!r)
            lg()->warn("could not send the refusal to chat {}: {}", chat_id, r.error().detail);
        else if (r->status != 200)
            lg()->warn("could not send the refusal to chat {}: HTTP {} {}", chat_id, r->status, r->body.substr(0, 200));
        else
            lg()->info("chat {} is not allowed: refused once", chat_id);
    }

    // Handles one update. ok: stored, refused, ignored, or dropped after a permanent refusal by the
    // store (logged); the Error "unavailable": not stored, ask again later (do not acknowledge).
    Status handle(const json& update) {
        auto m = map_update(update, s);
        auto uid = update.is_object() ? update.value("update_id", json()).dump() : "?";
        if (m.kind == Mapped::Kind::ignored) {
            ignored.inc();
            lg()->info("update {} ignored: {}", uid, m.why);
            return ok();
        }
        auto r = append(m.event);
        if (!r) {
            if (r.error().code == "unavailable") return r.error();
            // Permanent: retrying cannot help and would hold up every later update of the bot.
            dropped.inc();
            // Not the update itself: it may hold a stranger's text, which AccessDenied deliberately omits.
            lg()->error("update {} (chat {}) dropped: {}", uid, m.chat_id, r.error().detail);
            return ok();
        }
        if (r->first == 200) duplicates.inc();
        if (m.kind == Mapped::Kind::message) {
            if (r->first == 201) stored.inc();
            return ok();
        }
        refused.inc();
        // Version 1 of access:telegram:<chat> = the chat's first refused message, stored just now:
        // that one, and only that one, is answered.
        const auto& stored_ev = r->second["events"][0];
        if (r->first == 201 && stored_ev.value("aggregate_version", 0) == 1) send_refusal(m.chat_id);
        return ok();
    }

    void register_webhook() {
        int backoff_ms = 1000;
        while (!is_stopping()) {
            auto r = poll_client->post_json(
                "/bot" + s.token + "/setWebhook",
                {{"url", s.webhook_url}, {"secret_token", s.webhook_secret}, {"allowed_updates", allowed_updates()}});
            if (is_stopping()) return;
            if (r && r->status == 200) {
                set_state("ok");
                lg()->info("telegram: webhook registered at {}", s.webhook_url);
                return;
            }
            set_state(r && (r->status == 401 || r->status == 404) ? "unauthorized" : "webhook_not_set");
            lg()->error("setWebhook failed ({}); Telegram delivers nothing until it succeeds; retrying in {} ms",
                        r ? "HTTP " + std::to_string(r->status) + " " + r->body.substr(0, 200) : r.error().detail, backoff_ms);
            pause(std::chrono::milliseconds(backoff_ms));
            backoff_ms = std::min(backoff_ms * 2, 60000);
        }
    }

    static json allowed_updates() { return json::array({"message", "edited_message"}); }

    void poll_loop() {
        std::int64_t offset = 0;  // 0: none yet; Telegram returns what it has not seen confirmed
        int backoff_ms = 500;
        bool reported_unreachable = false;
        while (!is_stopping()) {
            try {
                if (!poll_once(offset, backoff_ms, reported_unreachable)) return;
            } catch (const std::exception& e) {
                // An answer of an unexpected shape: never let it end the poller (or the process).
                set_state("unreachable");
                lg()->error("getUpdates: unexpected answer ({}); retrying", e.what());
                pause(std::chrono::milliseconds(backoff_ms));
                backoff_ms = std::min(backoff_ms * 2, 30000);
            }
        }
    }

    // One getUpdates round and the updates it returned; false when stopping.
    bool poll_once(std::int64_t& offset, int& backoff_ms, bool& reported_unreachable) {
        json body = {{"timeout", s.poll_timeout_s}, {"allowed_updates", allowed_updates()}};
        if (offset > 0) body["offset"] = offset;
        auto r = poll_client->post_json("/bot" + s.token + "/getUpdates", body);
        if (is_stopping()) return false;
        if (!r || r->status >= 500) {
            if (!reported_unreachable)
                lg()->warn("getUpdates failed: {}; retrying with back-off",
                           r ? "HTTP " + std::to_string(r->status) : r.error().detail);
            reported_unreachable = true;
            set_state("unreachable");
            pause(std::chrono::milliseconds(backoff_ms));
            backoff_ms = std::min(backoff_ms * 2, 30000);
            return true;
        }
        auto j = r->json();
        if (r->status == 409) {
            // Another getUpdates consumer, or a webhook, owns this bot. Polling harder would only
            // fight it: report it and look again much later.
            conflicts.inc();
            set_state("conflict");
            lg()->error(
                "getUpdates: 409 Conflict ({}); another poller or a webhook is using this bot token. "
                "Stop the other consumer (or deleteWebhook, or use TELEGRAM_MODE=webhook); retrying in {} s",
                j.is_object() ? j.value("description", "") : "", s.conflict_retry_s);
            pause(std::chrono::seconds(s.conflict_retry_s));
            return true;
        }
        if (r->status == 429) {
            int after = 5;
            if (j.is_object() && j.contains("parameters") && j["parameters"].is_object())
                after = j["parameters"].value("retry_after", 5);
            lg()->warn("getUpdates: 429, retry after {} s", after);
            pause(std::chrono::seconds(std::clamp(after, 1, 3600)));
            return true;
        }
        if (r->status == 401 || r->status == 404) {
            set_state("unauthorized");
            lg()->error("getUpdates: HTTP {}: TELEGRAM_BOT_TOKEN is not accepted by {}; retrying in {} s", r->status, s.api_base,
                        s.conflict_retry_s);
            pause(std::chrono::seconds(s.conflict_retry_s));
            return true;
        }
        if (r->status != 200 || !j.is_object() || !j.value("ok", false) || !j.contains("result") || !j["result"].is_array()) {
            set_state("unreachable");
            lg()->warn("getUpdates: unexpected answer HTTP {}: {}", r->status, r->body.substr(0, 300));
            pause(std::chrono::milliseconds(backoff_ms));
            backoff_ms = std::min(backoff_ms * 2, 30000);
            return true;
        }
        if (reported_unreachable) lg()->info("getUpdates works again");
        reported_unreachable = false;
        backoff_ms = 500;
        set_state("ok");
        for (const auto& u : j["result"]) {
            if (!u.is_object() || !u.contains("update_id") || !u["update_id"].is_number_integer()) {
                lg()->warn("getUpdates returned an update without an integer update_id; skipped");
                continue;
            }
            auto id = u["update_id"].get<std::int64_t>();
            int wait_ms = 200;
            for (;;) {
                auto st = handle(u);
                if (st) break;
                lg()->warn("update {} not stored yet ({}); retrying", id, st.error().detail);
                if (!pause(std::chrono::milliseconds(wait_ms))) return false;
                wait_ms = std::min(wait_ms * 2, 10000);
            }
            // Committed (or deliberately skipped): only now may Telegram forget it.
            offset = id + 1;
        }
        return true;
    }
};

Ingress::Ingress(Settings s, AppendFn append, metrics::Registry& metrics)
    : impl_(std::make_unique<Impl>(std::move(s), std::move(append), metrics)) {}

Ingress::~Ingress() { stop(); }

const Settings& Ingress::settings() const { return impl_->s; }

void Ingress::start() {
    auto& im = *impl_;
    const auto& s = im.s;
    if (s.mode == "off") return;
    if (!s.allow_all && s.allowed.empty())
        lg()->warn("TELEGRAM_ALLOWED_CHAT_IDS is empty: every chat will be refused (set chat ids, or * for every chat)");
    if (s.mode == "webhook" && s.webhook_url.empty()) {
        im.set_state("ok");
        lg()->info(
            "telegram: webhook mode on POST /telegram/webhook (register it with setWebhook yourself, or set "
            "TELEGRAM_WEBHOOK_URL)");
        return;
    }
    // The poller thread's client; in webhook mode the same thread registers the webhook (retrying
    // until Telegram accepts it) and ends.
    im.poll_client =
        std::make_unique<http::Client>(s.api_base, im.client_options(std::chrono::milliseconds((s.poll_timeout_s + 15) * 1000)));
    if (s.mode == "webhook") {
        im.poller = std::thread([&im] { im.register_webhook(); });
        return;
    }
    lg()->info("telegram: long polling {} (timeout {} s)", s.api_base, s.poll_timeout_s);
    im.poller = std::thread([&im] { im.poll_loop(); });
}

void Ingress::stop() {
    auto& im = *impl_;
    {
        std::lock_guard lk(im.mu);
        im.stopping = true;
    }
    im.cv.notify_all();
    if (im.poll_client) im.poll_client->cancel();
    if (im.poller.joinable()) im.poller.join();
}

http::Response Ingress::webhook(const http::Request& req) {
    auto& im = *impl_;
    if (im.s.mode != "webhook")
        return http::Response::error(404, "not_found", "the Telegram webhook is not enabled (TELEGRAM_MODE=webhook)");
    if (req.method != "POST") return http::Response::error(405, "method_not_allowed", "use POST");
    if (!constant_time_equal(req.header("x-telegram-bot-api-secret-token"), im.s.webhook_secret))
        return http::Response::error(401, "unauthorized", "missing or wrong X-Telegram-Bot-Api-Secret-Token header");
    auto parsed = parse_json(req.body, "the body");
    if (!parsed) return http::Response::error(400, "invalid_json", parsed.error().detail);
    const json& update = *parsed;
    if (!update.is_object() || !update.contains("update_id") || !update["update_id"].is_number_integer() ||
        update["update_id"].get<std::int64_t>() < 0)
        return http::Response::error(400, "invalid_request",
                                     "the body must be a Telegram Update object with an integer update_id");
    auto st = im.handle(update);
    if (!st) return http::Response::error(503, st.error().code, st.error().detail);
    // Telegram only looks at the status; 200 after commit is the acknowledgement.
    return http::Response::json(200, {{"ok", true}});
}

json Ingress::status() const {
    std::lock_guard lk(impl_->mu);
    return {{"mode", impl_->s.mode}, {"state", impl_->s.mode == "off" ? "off" : impl_->state}};
}

}  // namespace engram::gateway::telegram
