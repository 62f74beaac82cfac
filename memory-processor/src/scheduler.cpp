#include "scheduler.h"

#include <nlohmann/json.hpp>

#include "engram/core/uuid.h"
#include "engram/http/url.h"
#include "engram/events/event.h"
#include "engram/http/client.h"
#include "engram/log/log.h"
#include "engram/pg/pg.h"

namespace engram::memory_processor {

namespace {

using nlohmann::json;

std::shared_ptr<spdlog::logger> logger() {
    static auto l = log::get("scheduler");
    return l;
}

constexpr std::size_t kMaxRecent = 10000;
constexpr auto kRecentFor = std::chrono::seconds(30);

const char* kChannels[] = {"telegram", "web", "webhook", "api", "email", "slack"};

std::string str(const json& j, const char* k) {
    return j.is_object() && j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : "";
}

// The trigger of a due reminder: everything from the reminder itself, so every attempt builds the same event.
events::NewEvent trigger_of(const std::string& session, const json& r) {
    const std::string rid = str(r, "reminder_id");
    std::string user = str(r, "user_id");
    if (user.empty()) user = session.substr(session.find(':') + 1);  // "session:web:abc" -> "web:abc"
    json reminder = {{"reminder_id", rid},
                     {"text", str(r, "text")},
                     {"due_at", str(r, "due_at")},
                     {"timezone", str(r, "timezone")},
                     {"scheduled_at", str(r, "scheduled_at")}};
    if (!str(r, "local_time").empty()) reminder["local_time"] = str(r, "local_time");
    json data = {{"source", "scheduler"}, {"user_id", user},
                 {"session_id", session}, {"message", "Reminder: " + str(r, "text")},
                 {"reminder_id", rid},    {"context", {{"reminder", reminder}}}};
    for (const char* c : kChannels)
        if (str(r, "channel") == c) data["channel"] = c;
    events::NewEvent e;
    auto id = Uuid::parse(rid);
    e.id = Uuid::v5(id ? *id : Uuid::v5(Uuid(), rid), "fired");
    e.type = "TriggerReceived";
    e.aggregate_id = session;
    e.data = std::move(data);
    std::string cause = str(r, "event_id");
    e.metadata = {{"source", "scheduler"}, {"user_id", user}, {"session_id", session}};
    if (!cause.empty()) e.metadata["causation_id"] = e.metadata["correlation_id"] = cause;
    return e;
}

}  // namespace

Scheduler::Scheduler(SchedulerOptions o) : o_(std::move(o)) {
    db_ = std::make_unique<pg::Pool>(o_.database_url, 1);
    http::ClientOptions co;
    co.timeout = std::chrono::seconds(10);
    if (!o_.api_token.empty()) co.default_headers.emplace_back("Authorization", "Bearer " + o_.api_token);
    store_ = std::make_unique<http::Client>(o_.event_store_url, co);
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::start() {
    thread_ = std::thread([this] {
        std::unique_lock lk(mu_);
        while (!stop_) {
            lk.unlock();
            auto r = tick();
            if (!r)
                logger()->warn("reminders: {} (trying again in {} ms)", r.error().detail, o_.poll.count());
            else if (r->due)
                logger()->info("reminders: {} due, {} fired, {} left for the next round", r->due, r->fired, r->deferred);
            lk.lock();
            cv_.wait_for(lk, o_.poll, [this] { return stop_; });
        }
    });
}

void Scheduler::stop() {
    {
        std::lock_guard lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

Result<Scheduler::Round> Scheduler::tick() {
    try {
        return round();
    } catch (const std::exception& e) {  // a statement cancelled, a broken row: this round only
        return Error::make("database", std::string("looking for due reminders: ") + e.what());
    }
}

Result<Scheduler::Round> Scheduler::round() {
    Round round;
    const auto now = std::chrono::steady_clock::now();
    std::erase_if(recent_, [&](const auto& kv) { return kv.second < now; });
    // Keyset pages over (next_due_at, id): sessions whose reminders are still being folded out of the
    // projection do not hide the ones behind them.
    std::string after_due, after_id;
    for (int page = 0; page < o_.max_pages_per_poll; ++page) {
        if (stopping()) break;
        auto rows = db_->run([&](pqxx::connection& c) {
            pqxx::read_transaction tx(c);
            const std::string due = "((state->>'next_due_at') COLLATE \"C\")";
            // The database's clock decides, not this machine's. The expressions match the index's.
            const std::string now_text = "(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') COLLATE \"C\")";
            std::string q = "SELECT id, version, state->'pending', " + now_text +
                            " FROM projection_state WHERE name = 'reminders' AND state->>'next_due_at' IS NOT NULL AND " + due +
                            " <= " + now_text;
            if (!after_id.empty())
                q += " AND (" + due + ", id) > (" + tx.quote(after_due) + " COLLATE \"C\", " + tx.quote(after_id) + ")";
            q += " ORDER BY " + due + ", id LIMIT " + std::to_string(o_.max_sessions_per_poll);
            std::vector<Due> out;
            for (const auto& row : tx.exec(q))
                out.push_back(
                    {row[0].c_str(), row[1].as<std::int64_t>(), json::parse(row[2].c_str(), nullptr, false), row[3].c_str()});
            return out;
        });
        if (!rows) return rows.error();
        for (const auto& d : *rows) {
            if (stopping()) return round;
            if (!fire_due(d, round)) return round;  // the store is unreachable: the next poll tries again
        }
        if (rows->size() < static_cast<std::size_t>(o_.max_sessions_per_poll)) break;
        after_id = rows->back().session;
        after_due.clear();
        for (const auto& r : rows->back().pending)
            if (r.is_object()) {
                after_due = str(r, "due_at");
                break;
            }
    }
    return round;
}

bool Scheduler::stopping() {
    std::lock_guard lk(mu_);
    return stop_;
}

bool Scheduler::fire_due(const Due& d, Round& round) {
    if (!d.pending.is_array()) return true;
    std::int64_t known = d.version;  // the session's version as far as this round knows
    for (const auto& r : d.pending) {
        if (!r.is_object() || str(r, "due_at") > d.now) break;  // pending is sorted by due time
        ++round.due;
        const std::string id = str(r, "reminder_id");
        if (recent_.count(id)) continue;
        auto outcome = fire_one(d.session, r, known);
        if (outcome == Outcome::unreachable) {
            round.deferred += 1;
            return false;
        }
        if (outcome == Outcome::fired) {
            ++round.fired;
            if (recent_.size() < kMaxRecent) recent_[id] = std::chrono::steady_clock::now() + kRecentFor;
        } else if (outcome == Outcome::settled) {
            if (recent_.size() < kMaxRecent) recent_[id] = std::chrono::steady_clock::now() + kRecentFor;
        } else {
            ++round.deferred;
        }
    }
    return true;
}

// One reminder's trigger, appended on the version this round knows. When the session has moved on
// (the projection lags the log, or other traffic), the events since are read: one that cancels or
// fires this reminder settles it (nothing is appended); anything else is traffic, and the append is
// tried again on the new version, as the AI processor's runs do.
Scheduler::Outcome Scheduler::fire_one(const std::string& session, const json& r, std::int64_t& known) {
    auto e = trigger_of(session, r);
    const std::string id = str(r, "reminder_id");
    for (int attempt = 0; attempt < 5; ++attempt) {
        json body = e.to_json();
        body["expected_version"] = known;
        auto res = store_->post_json("/events", body);
        if (!res) {
            logger()->warn("reminder {} of {}: the event store is unreachable: {}", id, session, res.error().detail);
            return Outcome::unreachable;
        }
        auto answer = res->json();
        if (res->status == 200 || res->status == 201) {
            if (res->status == 201 && answer.is_object() && answer.contains("events") && answer["events"].is_array() &&
                !answer["events"].empty() && answer["events"][0].is_object())
                known = answer["events"][0].value("aggregate_version", known);
            logger()->info("reminder {} of {} fired", id, session);
            return Outcome::fired;
        }
        std::string code = answer.is_object() ? str(answer, "error") : "";
        if (res->status >= 500 || res->status == 429) {
            logger()->warn("reminder {} of {}: the event store answered {}; next poll", id, session, res->status);
            return Outcome::unreachable;
        }
        if (res->status != 409 || code != "version_conflict") {
            logger()->error("reminder {} of {}: the event store answered {} {}", id, session, res->status,
                            res->body.substr(0, 300));
            return Outcome::deferred;
        }
        auto since = store_->get("/aggregates/" + http::url_encode(session) +
                                 "/events?from_version=" + std::to_string(known + 1) + "&limit=1000");
        if (!since || since->status != 200) return since ? Outcome::deferred : Outcome::unreachable;
        auto page = since->json(events::kMaxStoreAnswerDepth);
        if (!page.is_object() || !page.contains("events") || !page["events"].is_array() || page["events"].empty() ||
            page["events"].size() >= 1000)
            return Outcome::deferred;  // far behind: the projection catches up first
        for (const auto& ev : page["events"]) {
            const json& data = ev.is_object() && ev.contains("data") ? ev["data"] : json();
            const std::string type = ev.is_object() ? str(ev, "type") : "";
            if ((type == "ReminderCancelled" || type == "TriggerReceived") && str(data, "reminder_id") == id) {
                logger()->debug("reminder {} of {}: {} already in the log", id, session, type);
                return Outcome::settled;
            }
        }
        const json& last = page["events"].back();
        if (!last.is_object() || !last.contains("aggregate_version") || !last["aggregate_version"].is_number_integer())
            return Outcome::deferred;
        known = last["aggregate_version"].get<std::int64_t>();
    }
    return Outcome::deferred;
}

}  // namespace engram::memory_processor
