#include "scheduler.h"

#include <nlohmann/json.hpp>

#include "engram/core/uuid.h"
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
    struct Due {
        std::string session;
        std::int64_t version;
        json pending;
        std::string now;
    };
    auto rows = db_->run([&](pqxx::connection& c) {
        pqxx::read_transaction tx(c);
        // The database's clock decides, not this machine's. The expressions match the index's.
        auto r = tx.exec(
            "SELECT id, version, state->'pending', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
            "FROM projection_state WHERE name = 'reminders' AND state->>'next_due_at' IS NOT NULL "
            "AND ((state->>'next_due_at') COLLATE \"C\") <= (to_char(now() AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') COLLATE \"C\") "
            "ORDER BY ((state->>'next_due_at') COLLATE \"C\") LIMIT " +
            std::to_string(o_.max_sessions_per_poll));
        std::vector<Due> out;
        for (const auto& row : r)
            out.push_back(
                {row[0].c_str(), row[1].as<std::int64_t>(), json::parse(row[2].c_str(), nullptr, false), row[3].c_str()});
        return out;
    });
    if (!rows) return rows.error();
    Round round;
    const auto now = std::chrono::steady_clock::now();
    std::erase_if(recent_, [&](const auto& kv) { return kv.second < now; });
    for (const auto& d : *rows) {
        if (!d.pending.is_array()) continue;
        std::vector<events::NewEvent> batch;
        std::vector<std::string> ids;
        for (const auto& r : d.pending) {
            if (str(r, "due_at") > d.now) break;  // pending is sorted by due time
            ++round.due;
            if (recent_.count(str(r, "reminder_id"))) continue;
            batch.push_back(trigger_of(d.session, r));
            ids.push_back(str(r, "reminder_id"));
        }
        if (batch.empty()) continue;
        // All of a session's due reminders in one all-or-nothing append, on the version the state reflects.
        json body = {{"aggregate_id", d.session}, {"expected_version", d.version}, {"events", json::array()}};
        for (const auto& e : batch) body["events"].push_back(e.to_json());
        auto r = store_->post_json("/events", body);
        if (!r) {
            logger()->warn("reminders of {}: the event store is unreachable: {}", d.session, r.error().detail);
            round.deferred += static_cast<int>(batch.size());
            continue;
        }
        if (r->status == 200 || r->status == 201) {
            round.fired += static_cast<int>(batch.size());
            if (recent_.size() + ids.size() <= kMaxRecent)
                for (const auto& id : ids) recent_[id] = now + kRecentFor;
            for (const auto& id : ids) logger()->info("reminder {} of {} fired", id, d.session);
            continue;
        }
        round.deferred += static_cast<int>(batch.size());
        auto j = r->json();
        std::string code = j.is_object() ? str(j, "error") : "";
        if (r->status == 409 && code == "version_conflict")
            logger()->debug("reminders of {}: the session moved past version {}; next round", d.session, d.version);
        else
            logger()->error("reminders of {}: the event store answered {} {}", d.session, r->status, r->body.substr(0, 300));
    }
    return round;
}

}  // namespace engram::memory_processor
