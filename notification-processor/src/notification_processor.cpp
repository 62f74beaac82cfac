#include "notification_processor.h"

#include "engram/http/client.h"
#include "engram/log/log.h"

#include <curl/curl.h>
#include <pqxx/pqxx>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <optional>
#include <mutex>
#include <regex>
#include <thread>

namespace engram::notification {

using nlohmann::json;
using namespace std::chrono;

namespace {

std::shared_ptr<spdlog::logger> lg() {
    static auto l = log::get("notification-processor");
    return l;
}

// ---------------------------------------------------------------------------------------------
// notification_deliveries

struct Row {
    std::string status;  // pending | sending | sent | failed
    std::int64_t message_id = 0;
    int attempts = 0;
    std::string reason, detail;
};

std::map<int, Row> load_rows(pg::Pool& db, const std::string& source, Status& st) {
    std::map<int, Row> rows;
    auto r = db.run([&](pqxx::connection& c) {
        pqxx::read_transaction tx(c);
        auto res = tx.exec_params(
            "SELECT part, status, COALESCE(telegram_message_id, 0), attempts, COALESCE(reason, ''), COALESCE(detail, '') "
            "FROM notification_deliveries WHERE source_event_id = $1 ORDER BY part",
            source);
        for (const auto& row : res)
            rows[row[0].as<int>()] = Row{row[1].as<std::string>(), row[2].as<std::int64_t>(), row[3].as<int>(),
                                         row[4].as<std::string>(), row[5].as<std::string>()};
        return 0;
    });
    st = r.ok() ? ok() : Status(r.error());
    return rows;
}

// Every change of a delivery row is fenced (Context::fence in its transaction): an instance that lost
// the partition commits none, so the row only ever moves as the partition's current owner decides,
// and the row the owner reads is the whole story of the part.

// pending/none -> sending (attempts + 1). Returns the attempt number; an Error when the row is in
// another state (changed under us: the handler is retried and re-reads it), the lease is lost
// ("fenced") or the database fails.
Result<int> mark_sending(processor::Context& ctx, const std::string& source, int part, const std::string& channel) {
    auto r = ctx.db().run([&](pqxx::connection& c) -> Result<std::optional<int>> {
        pqxx::work tx(c);
        if (auto f = ctx.fence(tx); !f) return f.error();
        auto res = tx.exec_params(
            "INSERT INTO notification_deliveries (source_event_id, part, channel, status, attempts, updated_at) "
            "VALUES ($1, $2, $3, 'sending', 1, now()) "
            "ON CONFLICT (source_event_id, part) DO UPDATE SET status = 'sending', "
            "attempts = notification_deliveries.attempts + 1, updated_at = now() "
            "WHERE notification_deliveries.status = 'pending' RETURNING attempts",
            source, part, channel);
        tx.commit();
        if (res.empty()) return std::optional<int>();
        return std::optional<int>(res[0][0].as<int>());
    });
    if (!r) return r.error();
    auto& attempts = *r;
    if (!attempts) return attempts.error();
    if (!*attempts) return Error::make("conflict", "delivery row of part " + std::to_string(part) + " changed concurrently");
    return **attempts;
}

// sending -> status.
Status mark(processor::Context& ctx, const std::string& source, int part, const std::string& status, std::int64_t message_id = 0,
            const std::string& reason = "", const std::string& detail = "") {
    auto r = ctx.db().run([&](pqxx::connection& c) -> Status {
        pqxx::work tx(c);
        if (auto f = ctx.fence(tx); !f) return f;
        tx.exec_params(
            "UPDATE notification_deliveries SET status = $3, telegram_message_id = NULLIF($4, 0), "
            "reason = NULLIF($5, ''), detail = NULLIF($6, ''), updated_at = now() "
            "WHERE source_event_id = $1 AND part = $2",
            source, part, status, message_id, reason, detail);
        tx.commit();
        return ok();
    });
    if (!r) return r.error();
    return *r;
}

// ---------------------------------------------------------------------------------------------
// One attempt's outcome, as the channel senders classify it.

struct Outcome {
    enum Kind { sent, not_sent, rejected, unknown } kind = unknown;
    std::int64_t message_id = 0;  // Telegram
    std::string reason;           // NotificationFailed reason when it ends the delivery
    std::string detail;
    int http_status = 0;
    bool rate_limited = false;  // not_sent because of a 429
    nanoseconds wait{0};        // not_sent: wait at least this long before the next attempt
    std::string info;           // e.g. SMTP reply
};

struct PartResult {
    bool delivered = false;
    std::int64_t message_id = 0;
    int attempts = 0;
    // when not delivered:
    std::string reason, detail;
    int http_status = 0;
    bool retryable = false;
    std::string info;
};

// Sleeps d in slices, false when the processor is stopping.
bool pause(processor::Context& ctx, nanoseconds d) {
    auto until = steady_clock::now() + d;
    while (steady_clock::now() < until) {
        if (ctx.stopping()) return false;
        std::this_thread::sleep_for(std::min<nanoseconds>(until - steady_clock::now(), milliseconds(100)));
    }
    return !ctx.stopping();
}

Error stopping_error() { return Error::make("stopping", "the processor is stopping; the delivery resumes on redelivery"); }

// The delivery state machine of one part (README: "Delivery state machine").
Result<PartResult> deliver_part(processor::Context& ctx, const Settings& s, const std::string& source, int part,
                                const std::string& channel, std::optional<Row> row,
                                const std::function<nanoseconds()>& before_attempt, const std::function<Outcome()>& send) {
    PartResult pr;
    if (row) {
        pr.attempts = row->attempts;
        if (row->status == "sent") {
            pr.delivered = true;
            pr.message_id = row->message_id;
            return pr;
        }
        if (row->status == "failed") {
            pr.reason = row->reason.empty() ? "internal" : row->reason;
            pr.detail = row->detail;
            return pr;
        }
        if (row->status == "sending") {
            // Unknown outcome (a crash or an unrecorded answer between send and record): at most once.
            pr.reason = "unknown_outcome";
            pr.detail = "part " + std::to_string(part + 1) +
                        ": an earlier attempt may or may not have been delivered (no recorded answer); not resent";
            lg()->warn("{} {} part {}: unknown outcome of an earlier attempt, not resending", channel, source, part);
            if (auto m = mark(ctx, source, part, "failed", 0, pr.reason, pr.detail); !m) return m.error();
            return pr;
        }
    }
    int transient = 0, limited = 0;
    nanoseconds backoff = duration_cast<nanoseconds>(s.backoff);
    nanoseconds wait{0};
    while (true) {
        if (wait.count() > 0 && !pause(ctx, wait)) return stopping_error();
        if (auto w = before_attempt(); w.count() > 0 && !pause(ctx, w)) return stopping_error();
        if (ctx.stopping()) return stopping_error();
        auto n = mark_sending(ctx, source, part, channel);
        if (!n) return n.error();  // nothing sent: the handler retry re-reads the row
        pr.attempts = *n;
        if (!ctx.owns()) {
            // The lease went while the row was being marked: send nothing. Back to pending, if
            // the lease in the database still allows it (then the next owner sends the part);
            // otherwise the row stays 'sending' and the next owner records unknown_outcome.
            auto back = mark(ctx, source, part, "pending", 0, "", "not sent: the partition's lease was lost before the send");
            lg()->warn("{} {} part {}: the partition's lease is lost, not sending ({})", channel, source, part,
                       back ? "left pending" : back.error().detail);
            return Error::make("fenced", "the partition's lease is lost: part " + std::to_string(part) + " not sent");
        }
        Outcome o = send();
        pr.http_status = o.http_status;
        pr.info = o.info;
        switch (o.kind) {
            case Outcome::sent:
                if (auto m = mark(ctx, source, part, "sent", o.message_id); !m) return m.error();  // stays 'sending'
                pr.delivered = true;
                pr.message_id = o.message_id;
                return pr;
            case Outcome::rejected:
            case Outcome::unknown: {
                pr.reason = o.reason.empty() ? (o.kind == Outcome::unknown ? "unknown_outcome" : "rejected") : o.reason;
                pr.detail = o.detail;
                pr.retryable = false;
                lg()->warn("{} {} part {}: {} ({})", channel, source, part, pr.reason, o.detail);
                if (auto m = mark(ctx, source, part, "failed", 0, pr.reason, pr.detail); !m) return m.error();
                return pr;
            }
            case Outcome::not_sent: {
                bool give_up = false;
                if (o.rate_limited) {
                    if (++limited > s.max_rate_limited || o.wait > duration_cast<nanoseconds>(s.max_retry_after)) {
                        give_up = true;
                        pr.reason = "rate_limited";
                    }
                    wait = std::max(o.wait, nanoseconds(milliseconds(100)));
                } else {
                    if (++transient >= s.max_send_attempts) {
                        give_up = true;
                        pr.reason = o.reason.empty() ? "unreachable" : o.reason;
                    }
                    wait = std::max(backoff, o.wait);
                    backoff = std::min(backoff * 2, duration_cast<nanoseconds>(s.max_backoff));
                }
                pr.detail = o.detail;
                if (give_up) {
                    pr.retryable = true;
                    lg()->warn("{} {} part {}: giving up after {} attempts: {}", channel, source, part, pr.attempts, o.detail);
                    if (auto m = mark(ctx, source, part, "failed", 0, pr.reason, pr.detail); !m) return m.error();
                    return pr;
                }
                lg()->info("{} {} part {}: not delivered ({}); next attempt in {} ms", channel, source, part, o.detail,
                           duration_cast<milliseconds>(wait).count());
                if (auto m = mark(ctx, source, part, "pending", 0, "", o.detail); !m) return m.error();
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Channels

std::string session_part(const std::string& session, std::size_t index) {
    // session:<channel>:<id> -> index 1 = channel, 2 = id (which may itself contain ':')
    if (session.rfind("session:", 0) != 0) return "";
    auto c = session.find(':', 8);
    if (c == std::string::npos) return "";
    return index == 1 ? session.substr(8, c - 8) : session.substr(c + 1);
}

std::string session_of(const events::Event& e) {
    if (e.aggregate_id.rfind("session:", 0) == 0) return e.aggregate_id;
    if (e.data.contains("session_id") && e.data["session_id"].is_string()) return e.data["session_id"].get<std::string>();
    if (e.metadata.contains("session_id") && e.metadata["session_id"].is_string())
        return e.metadata["session_id"].get<std::string>();
    return "";
}

struct BaseAndPath {
    std::string base, path;
};
BaseAndPath split_url(const std::string& url) {
    auto p = url.find("://");
    auto slash = p == std::string::npos ? std::string::npos : url.find('/', p + 3);
    if (slash == std::string::npos) return {url, "/"};
    return {url.substr(0, slash), url.substr(slash)};
}
std::string host_of(const std::string& url) {
    auto b = split_url(url).base;
    auto p = b.find("://");
    return p == std::string::npos ? b : b.substr(p + 3);
}

// A transport error: was the request possibly received?
Outcome transport_outcome(const Error& e) {
    Outcome o;
    o.detail = e.code + ": " + e.detail;
    if (e.code == "connect" || e.code == "bad_url") {
        o.kind = Outcome::not_sent;
        o.reason = "unreachable";
    } else {
        o.kind = Outcome::unknown;  // timeout / io: the request may have been processed
        o.reason = e.code == "timeout" ? "unknown_outcome" : "unknown_outcome";
    }
    return o;
}

Outcome telegram_send(http::Client& client, const Settings& s, const json& chat_id, const std::string& text,
                      const json& reply_to) {
    json body = {{"chat_id", chat_id}, {"text", text}};
    if (!reply_to.is_null()) {
        body["reply_to_message_id"] = reply_to;
        body["allow_sending_without_reply"] = true;
    }
    auto r = client.post_json("/bot" + s.telegram_token + "/sendMessage", body);
    if (!r) return transport_outcome(r.error());
    Outcome o;
    o.http_status = r->status;
    json j = r->json();
    std::string desc = j.is_object() && j.contains("description") && j["description"].is_string()
                           ? j["description"].get<std::string>()
                           : r->body.substr(0, 200);
    if (r->status == 200 && j.is_object() && j.value("ok", false) && j.contains("result") && j["result"].contains("message_id") &&
        j["result"]["message_id"].is_number_integer()) {
        o.kind = Outcome::sent;
        o.message_id = j["result"]["message_id"].get<std::int64_t>();
        return o;
    }
    if (r->status == 200) {  // a 200 without a message id: Telegram did something we cannot confirm
        o.kind = Outcome::unknown;
        o.reason = "unknown_outcome";
        o.detail = "unexpected answer: " + r->body.substr(0, 200);
        return o;
    }
    o.detail = "HTTP " + std::to_string(r->status) + ": " + desc;
    if (r->status == 429) {
        o.kind = Outcome::not_sent;
        o.rate_limited = true;
        int after = 1;
        if (j.is_object() && j.contains("parameters") && j["parameters"].contains("retry_after") &&
            j["parameters"]["retry_after"].is_number())
            after = std::max(0, j["parameters"]["retry_after"].get<int>());
        o.wait = seconds(after);
        return o;
    }
    if (r->status >= 500) {
        o.kind = Outcome::not_sent;  // Telegram does not perform a request it answers with an error
        o.reason = "unreachable";
        return o;
    }
    o.kind = Outcome::rejected;  // 400 (bad chat / text), 401 (token), 403 (blocked by the user), 404...
    o.reason = r->status == 401 || r->status == 404 ? "not_configured" : "rejected";
    return o;
}

Outcome slack_send(const Settings& s, const std::string& text) {
    auto [base, path] = split_url(s.slack_webhook_url);
    http::ClientOptions co;
    co.timeout = s.http_timeout;
    co.redact = {path};  // a Slack webhook's path is its secret
    http::Client client(base, co);
    auto r = client.post_json(path, json{{"text", text}});
    if (!r) return transport_outcome(r.error());
    Outcome o;
    o.http_status = r->status;
    if (r->status >= 200 && r->status < 300) {
        o.kind = Outcome::sent;
        return o;
    }
    o.detail = "HTTP " + std::to_string(r->status) + ": " + r->body.substr(0, 200);
    if (r->status == 429) {
        o.kind = Outcome::not_sent;
        o.rate_limited = true;
        int after = 1;
        try {
            auto h = r->header("retry-after");
            if (!h.empty()) after = std::stoi(h);
        } catch (...) {}
        o.wait = seconds(std::max(after, 0));
    } else if (r->status >= 500) {
        o.kind = Outcome::not_sent;
        o.reason = "unreachable";
    } else {
        o.kind = Outcome::rejected;
        o.reason = "rejected";
    }
    return o;
}

// --- email ---

std::string base64(const std::string& in) {
    static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
        out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
    }
    if (i + 1 == in.size()) {
        unsigned v = (unsigned char)in[i] << 16;
        out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
    } else if (i + 2 == in.size()) {
        unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8;
        out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
    }
    return out;
}

bool header_safe(const std::string& v) { return v.find_first_of("\r\n") == std::string::npos; }

std::string encode_header(const std::string& v) {
    bool ascii = std::all_of(v.begin(), v.end(), [](unsigned char c) { return c >= 0x20 && c < 0x7f; });
    return ascii ? v : "=?UTF-8?B?" + base64(v) + "?=";
}

bool valid_email(const std::string& a) {
    static const std::regex re(R"(^[^@\s<>,;"]+@[^@\s<>,;"]+$)");
    return a.size() <= 254 && std::regex_match(a, re);
}

struct Mail {
    std::string from;
    std::vector<std::string> to;
    std::string subject, body, message_id;
};

std::string mail_payload(const Mail& m) {
    char date[64];
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    std::string to;
    for (std::size_t i = 0; i < m.to.size(); ++i) to += (i ? ", " : "") + m.to[i];
    std::string p = "Date: " + std::string(date) + "\r\nFrom: " + m.from + "\r\nTo: " + to +
                    "\r\nSubject: " + encode_header(m.subject) + "\r\nMessage-ID: " + m.message_id +
                    "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n";
    // Normalise line ends to CRLF (libcurl dot-stuffs lines starting with '.').
    for (std::size_t i = 0; i < m.body.size(); ++i) {
        char c = m.body[i];
        if (c == '\r') continue;
        if (c == '\n')
            p += "\r\n";
        else
            p += c;
    }
    p += "\r\n";
    return p;
}

struct Src {
    const std::string* p;
    std::size_t* off;
};
size_t read_payload(char* buf, size_t size, size_t n, void* ud) {
    auto* sp = static_cast<Src*>(ud);
    size_t room = size * n, left = sp->p->size() - *sp->off, k = std::min(room, left);
    std::memcpy(buf, sp->p->data() + *sp->off, k);
    *sp->off += k;
    return k;
}

Outcome smtp_send(const Settings& s, const Mail& m) {
    std::string payload = mail_payload(m);
    std::size_t offset = 0;
    CURL* curl = curl_easy_init();
    Outcome o;
    if (!curl) {
        o.kind = Outcome::not_sent;
        o.detail = "curl_easy_init failed";
        return o;
    }
    struct curl_slist* rcpt = nullptr;
    for (auto& t : m.to) rcpt = curl_slist_append(rcpt, ("<" + t + ">").c_str());
    std::string from = "<" + m.from + ">";
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(curl, CURLOPT_URL, s.smtp_url.c_str());
    curl_easy_setopt(curl, CURLOPT_MAIL_FROM, from.c_str());
    curl_easy_setopt(curl, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(s.http_timeout.count()));
    if (s.smtp_url.rfind("smtps://", 0) != 0) curl_easy_setopt(curl, CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
    Src src{&payload, &offset};
    curl_easy_setopt(curl, CURLOPT_READDATA, &src);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, &read_payload);
    CURLcode rc = curl_easy_perform(curl);
    long code = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(rcpt);
    curl_easy_cleanup(curl);
    o.info = std::to_string(code);
    if (rc == CURLE_OK) {
        o.kind = Outcome::sent;
        return o;
    }
    o.detail = std::string(curl_easy_strerror(rc)) + (errbuf[0] ? std::string(": ") + errbuf : "") +
               (code ? " (SMTP " + std::to_string(code) + ")" : "");
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY) {
        o.kind = Outcome::not_sent;
        o.reason = "unreachable";
    } else if (code >= 500 && code < 600) {
        o.kind = Outcome::rejected;  // a permanent SMTP reply: the message was refused
        o.reason = code == 550 || code == 553 || code == 501 ? "invalid_recipient" : "rejected";
    } else if (code >= 400 && code < 500) {
        o.kind = Outcome::not_sent;  // a transient SMTP reply: refused for now
        o.reason = "unreachable";
    } else if (rc == CURLE_LOGIN_DENIED || rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_URL_MALFORMAT) {
        o.kind = Outcome::rejected;
        o.reason = "not_configured";
    } else {
        o.kind = Outcome::unknown;  // timeout / connection lost mid-transaction
        o.reason = "unknown_outcome";
    }
    return o;
}

std::vector<std::string> email_recipients(const events::Event& e) {
    std::vector<std::string> to;
    auto take = [&](const json& v) {
        if (v.is_string())
            to.push_back(v.get<std::string>());
        else if (v.is_array())
            for (auto& x : v)
                if (x.is_string()) to.push_back(x.get<std::string>());
    };
    if (e.data.contains("to")) take(e.data["to"]);
    if (to.empty() && e.metadata.contains("to")) take(e.metadata["to"]);
    if (to.empty() && e.metadata.contains("email")) take(e.metadata["email"]);
    if (to.empty()) {
        auto id = session_part(session_of(e), 2);
        if (id.find('@') != std::string::npos) to.push_back(id);
    }
    return to;
}

// A decimal chat id as Telegram writes it ("007" -> "7"), the form TELEGRAM_ALLOWED_CHAT_IDS holds;
// anything else (an @channel name) as it is, which only "*" allows.
std::string canonical_chat(const std::string& chat) {
    if (!std::regex_match(chat, std::regex("-?[0-9]{1,19}"))) return chat;
    try {
        return std::to_string(std::stoll(chat));
    } catch (...) {
        return chat;
    }
}

// ---------------------------------------------------------------------------------------------

class Delivery {
public:
    explicit Delivery(Settings s) : s_(std::move(s)), limiter_(std::make_shared<RateLimiter>(s_.limits, s_.clock)) {}

    Status operator()(processor::Context& ctx) {
        const auto& e = ctx.event();
        if (e.type == "AIProcessingStarted" || e.type == "ToolCompleted") {
            // Not after the tools that answer or end the run: "typing…" would outlive the reply.
            auto tool = e.data.contains("tool") && e.data["tool"].is_string() ? e.data["tool"].get<std::string>() : "";
            if (tool != "send_message" && tool != "task_complete") typing(e);
            return ok();
        }
        if (e.type != "MessageGenerated") return ok();
        std::string channel = channel_of(e);
        std::string text = e.data.value("text", std::string());
        if (channel == "telegram") return telegram(ctx, text);
        if (channel == "email") return email(ctx, text);
        if (channel == "slack") return slack(ctx, text);
        // web / api / webhook: their clients read the log (SSE); nothing to deliver.
        lg()->debug("{} on channel '{}': nothing to deliver", e.id.str(), channel);
        return ok();
    }

private:
    Status failed(processor::Context& ctx, const std::string& channel, const PartResult& pr, json extra = json::object()) {
        json data = {{"source_event_id", ctx.event().id.str()},
                     {"channel", channel},
                     {"reason", pr.reason.substr(0, 64)},
                     {"attempts", std::max(pr.attempts, 0)},
                     {"retryable", pr.retryable}};
        if (!pr.detail.empty()) data["detail"] = pr.detail;
        if (pr.http_status >= 100 && pr.http_status <= 599) data["http_status"] = pr.http_status;
        for (auto& [k, v] : extra.items()) data[k] = v;
        auto r = ctx.append("failed:" + channel,
                            {.type = "NotificationFailed", .aggregate_id = ctx.event().aggregate_id, .data = data});
        if (!r) return r.error();
        return ok();
    }
    Status not_possible(processor::Context& ctx, const std::string& channel, const std::string& reason,
                        const std::string& detail) {
        PartResult pr;
        pr.reason = reason;
        pr.detail = detail;
        lg()->warn("{} {}: {} ({})", channel, ctx.event().id.str(), reason, detail);
        return failed(ctx, channel, pr);
    }

    // "typing…" in a Telegram chat while its run works: at its start and after each tool call, for
    // a live run only (an old event met in a catch-up or a replay types nothing), at most every 4 s
    // per chat. Ephemeral and best effort: nothing is recorded, a failure is not retried.
    void typing(const events::Event& e) {
        if (s_.telegram_token.empty() || session_part(session_of(e), 1) != "telegram") return;
        if (std::chrono::system_clock::now() - e.timestamp > std::chrono::seconds(30)) return;
        std::string chat = session_part(session_of(e), 2);
        if (chat.empty() || !s_.telegram_allowed.allows(canonical_chat(chat))) return;
        {
            std::lock_guard lk(typing_mu_);
            auto now = std::chrono::steady_clock::now();
            if (typing_at_.size() > 10000) typing_at_.clear();  // a bound, not a cache that matters
            auto [it, fresh] = typing_at_.emplace(chat, now);
            if (!fresh && now - it->second < std::chrono::seconds(4)) return;
            it->second = now;
        }
        json chat_json = chat;
        try {
            if (std::regex_match(chat, std::regex("-?[0-9]{1,19}"))) chat_json = std::stoll(chat);
        } catch (...) {}
        http::ClientOptions co;
        co.timeout = std::min<std::chrono::milliseconds>(s_.http_timeout, std::chrono::milliseconds(2000));
        co.redact = {s_.telegram_token};
        http::Client client(s_.telegram_api_base, co);
        auto r = client.post_json("/bot" + s_.telegram_token + "/sendChatAction", {{"chat_id", chat_json}, {"action", "typing"}});
        if (!r || r->status != 200) lg()->debug("sendChatAction to {} failed (ignored)", chat.substr(0, 40));
    }

    Status telegram(processor::Context& ctx, const std::string& text) {
        const auto& e = ctx.event();
        if (s_.telegram_token.empty()) return not_possible(ctx, "telegram", "not_configured", "TELEGRAM_BOT_TOKEN is not set");
        std::string chat = telegram_chat_id(e);
        if (chat.empty())
            return not_possible(ctx, "telegram", "invalid_recipient", "no chat_id and no session:telegram:<id> session");
        if (!s_.telegram_allowed.allows(canonical_chat(chat)))
            return not_possible(ctx, "telegram", "chat_not_allowed",
                                "chat " + chat.substr(0, 40) + " is not in TELEGRAM_ALLOWED_CHAT_IDS: nothing was sent");
        json chat_json = chat;
        if (e.data.contains("chat_id") && e.data["chat_id"].is_number_integer())
            chat_json = e.data["chat_id"];
        else if (std::regex_match(chat, std::regex("-?[0-9]{1,19}"))) {
            try {
                chat_json = std::stoll(chat);
            } catch (...) {}
        }
        json reply_to = e.data.contains("reply_to") ? e.data["reply_to"] : json();
        auto parts = split_message(text);
        const std::string source = e.id.str();
        Status st = ok();
        auto rows = load_rows(ctx.db(), source, st);
        if (!st) return st;
        http::ClientOptions co;
        co.timeout = s_.http_timeout;
        co.redact = {s_.telegram_token};  // it is part of every Bot API path
        http::Client client(s_.telegram_api_base, co);
        std::vector<std::int64_t> ids;
        int attempts = 0;
        for (std::size_t i = 0; i < parts.size(); ++i) {
            std::optional<Row> row;
            if (auto it = rows.find(int(i)); it != rows.end()) row = it->second;
            auto pr = deliver_part(
                ctx, s_, source, int(i), "telegram", row, [&] { return limiter_->reserve(chat); },
                [&] {
                    auto o = telegram_send(client, s_, chat_json, parts[i], i == 0 ? reply_to : json());
                    if (o.rate_limited) limiter_->penalize(chat, o.wait);
                    return o;
                });
            if (!pr) return pr.error();
            attempts += pr->attempts;
            if (!pr->delivered)
                return failed(
                    ctx, "telegram", *pr,
                    {{"chat_id", chat_json}, {"parts", parts.size()}, {"parts_sent", ids.size()}, {"message_ids", ids}});
            ids.push_back(pr->message_id);
        }
        json data = {{"chat_id", chat_json},
                     {"message_ids", ids},
                     {"source_event_id", source},
                     {"parts", parts.size()},
                     {"characters", telegram_length(text)},
                     {"attempts", std::max(attempts, 1)}};
        auto r = ctx.append("telegram", {.type = "TelegramMessageSent", .aggregate_id = e.aggregate_id, .data = data});
        if (!r) return r.error();
        lg()->info("telegram {} -> chat {}: {} part(s), message ids {}", source, chat, parts.size(), json(ids).dump());
        return ok();
    }

    Status single(processor::Context& ctx, const std::string& channel, const std::function<Outcome()>& send, PartResult& out) {
        Status st = ok();
        auto rows = load_rows(ctx.db(), ctx.event().id.str(), st);
        if (!st) return st;
        std::optional<Row> row;
        if (auto it = rows.find(0); it != rows.end()) row = it->second;
        auto pr = deliver_part(
            ctx, s_, ctx.event().id.str(), 0, channel, row, [] { return nanoseconds{0}; }, send);
        if (!pr) return pr.error();
        out = *pr;
        return ok();
    }

    Status slack(processor::Context& ctx, const std::string& text) {
        if (s_.slack_webhook_url.empty()) return not_possible(ctx, "slack", "not_configured", "SLACK_WEBHOOK_URL is not set");
        PartResult pr;
        if (auto st = single(
                ctx, "slack", [&] { return slack_send(s_, text); }, pr);
            !st)
            return st;
        if (!pr.delivered) return failed(ctx, "slack", pr);
        json data = {{"source_event_id", ctx.event().id.str()},
                     {"parts", 1},
                     {"webhook_host", host_of(s_.slack_webhook_url)},
                     {"attempts", std::max(pr.attempts, 1)}};
        auto r = ctx.append("slack", {.type = "SlackMessageSent", .aggregate_id = ctx.event().aggregate_id, .data = data});
        if (!r) return r.error();
        return ok();
    }

    Status email(processor::Context& ctx, const std::string& text) {
        const auto& e = ctx.event();
        if (s_.smtp_url.empty() || s_.email_from.empty())
            return not_possible(ctx, "email", "not_configured", "SMTP_URL and EMAIL_FROM must be set");
        Mail m;
        m.from = s_.email_from;
        m.to = email_recipients(e);
        if (m.to.empty()) return not_possible(ctx, "email", "invalid_recipient", "no recipient (data.to, metadata.to)");
        for (auto& t : m.to)
            if (!valid_email(t))
                return not_possible(ctx, "email", "invalid_recipient", "not an email address: " + t.substr(0, 100));
        m.subject = e.data.value("subject", std::string("Message from engram"));
        if (!header_safe(m.subject))
            m.subject.erase(std::remove_if(m.subject.begin(), m.subject.end(), [](char c) { return c == '\r' || c == '\n'; }),
                            m.subject.end());
        m.body = text;
        m.message_id = "<" + e.id.str() + "@engram>";
        PartResult pr;
        if (auto st = single(
                ctx, "email", [&] { return smtp_send(s_, m); }, pr);
            !st)
            return st;
        if (!pr.delivered) return failed(ctx, "email", pr);
        json data = {{"to", m.to},     {"subject", m.subject},       {"source_event_id", e.id.str()},
                     {"from", m.from}, {"message_id", m.message_id}, {"attempts", std::max(pr.attempts, 1)}};
        if (!pr.info.empty()) data["smtp_response"] = pr.info;
        auto r = ctx.append("email", {.type = "EmailSent", .aggregate_id = e.aggregate_id, .data = data});
        if (!r) return r.error();
        return ok();
    }

    Settings s_;
    std::shared_ptr<RateLimiter> limiter_;
    std::mutex typing_mu_;
    std::map<std::string, std::chrono::steady_clock::time_point> typing_at_;  // chat -> last "typing", guarded
};

}  // namespace

std::vector<std::string> handled_types() { return {"MessageGenerated", "AIProcessingStarted", "ToolCompleted"}; }

std::string channel_of(const events::Event& e) {
    if (e.data.contains("channel") && e.data["channel"].is_string()) return e.data["channel"].get<std::string>();
    return session_part(session_of(e), 1);
}

std::string telegram_chat_id(const events::Event& e) {
    if (e.data.contains("chat_id")) {
        const auto& c = e.data["chat_id"];
        if (c.is_number_integer()) return std::to_string(c.get<std::int64_t>());
        if (c.is_string() && !c.get<std::string>().empty()) return c.get<std::string>();
    }
    auto s = session_of(e);
    if (session_part(s, 1) == "telegram") return session_part(s, 2);
    return "";
}

void migrate(pqxx::connection& c) {
    pqxx::work tx(c);
    tx.exec("SELECT pg_advisory_xact_lock(hashtext('engram.notification_deliveries'))");
    tx.exec(R"(CREATE TABLE IF NOT EXISTS notification_deliveries (
        source_event_id uuid NOT NULL,
        part int NOT NULL,
        channel text NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
        telegram_message_id bigint,
        attempts int NOT NULL DEFAULT 0,
        reason text,
        detail text,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (source_event_id, part)))");
    tx.commit();
}

config::Spec settings_spec() {
    config::Spec spec;
    spec.add({"TELEGRAM_BOT_TOKEN", "Telegram bot token (<digits>:<secret>); unset = Telegram delivery fails with not_configured",
              "", false,
              [](const std::string& v) -> std::optional<std::string> {
                  static const std::regex re("^[0-9]+:[A-Za-z0-9_-]+$");
                  if (std::regex_match(v, re)) return std::nullopt;
                  return "must look like <bot id>:<secret> (digits, ':', letters, digits, '_' or '-')";
              },
              true});
    spec.add(
        {"TELEGRAM_API_BASE", "Telegram Bot API base URL", "https://api.telegram.org", false, config::url({"http", "https"})});
    config::add_telegram_allowed_chats(spec);
    spec.add({"SMTP_URL", "SMTP server for email delivery, e.g. smtp://127.0.0.1:2525 or smtps://user:pass@host:465", "", false,
              config::url({"smtp", "smtps"}), true});
    spec.add(
        {"EMAIL_FROM", "sender address of delivered email", "", false, [](const std::string& v) -> std::optional<std::string> {
             if (valid_email(v)) return std::nullopt;
             return "must be an email address (got '" + v.substr(0, 100) + "')";
         }});
    spec.add({"SLACK_WEBHOOK_URL", "Slack incoming webhook URL", "", false, config::url({"http", "https"}), true});
    return spec;
}

Settings settings_from(const config::Values& v) {
    Settings s;
    s.telegram_token = v.get("TELEGRAM_BOT_TOKEN");
    if (v.has("TELEGRAM_API_BASE")) s.telegram_api_base = v.get("TELEGRAM_API_BASE");
    s.telegram_allowed = config::telegram_allowed_chats(v);
    while (!s.telegram_api_base.empty() && s.telegram_api_base.back() == '/') s.telegram_api_base.pop_back();
    s.smtp_url = v.get("SMTP_URL");
    s.email_from = v.get("EMAIL_FROM");
    s.slack_webhook_url = v.get("SLACK_WEBHOOK_URL");
    return s;
}

processor::Handler make_handler(Settings s) {
    static const bool curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    (void)curl_ready;
    auto d = std::make_shared<Delivery>(std::move(s));
    return [d](processor::Context& ctx) { return (*d)(ctx); };
}

}  // namespace engram::notification
