// The reminder scheduler against the real event store, PostgreSQL and nats-server: reminders fire
// once, in their session, also with two memory processors, one killed with -9 and started again.
#include "scheduler.h"

#include "engram/core/time.h"
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/projections/projections.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <thread>

using namespace engram;
using nlohmann::json;

namespace {

std::string at(std::chrono::milliseconds from_now) { return format_rfc3339(SysTime(now_ms() + from_now)); }

json scheduled(const std::string& session, const std::string& id, const std::string& due, const std::string& text) {
    return {{"type", "ReminderScheduled"},
            {"aggregate_id", session},
            {"id", id},
            {"data",
             {{"reminder_id", id},
              {"session_id", session},
              {"user_id", "telegram:42"},
              {"text", text},
              {"due_at", due},
              {"timezone", "Europe/Berlin"},
              {"channel", "telegram"}}}};
}

json cancelled(const std::string& session, const std::string& id) {
    return {{"type", "ReminderCancelled"}, {"aggregate_id", session}, {"data", {{"reminder_id", id}, {"session_id", session}}}};
}

struct Env : testing::Stack {
    http::Client client{url()};
    Env() : testing::Stack("scheduler") {}
    void append(const json& e) {
        auto r = client.post_json("/events", e);
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
    }
    // TriggerReceived of the session, by reminder id.
    std::map<std::string, int> fired(const std::string& session) {
        std::map<std::string, int> out;
        for (const auto& e : aggregate(session))
            if (e["type"] == "TriggerReceived" && e["data"].contains("reminder_id"))
                ++out[e["data"]["reminder_id"].get<std::string>()];
        return out;
    }
    // What a memory processor would persist for the session's reminders, written by the test itself
    // (so that the scheduler's view can be made stale on purpose).
    void write_reminders_row(const std::string& session) {
        std::vector<events::Event> evs;
        for (const auto& j : aggregate(session)) evs.push_back(*events::Event::from_json(j));
        auto state = projections::fold(projections::reminders(), session, evs);
        pqxx::connection c(db());
        pqxx::work tx(c);
        tx.exec("INSERT INTO projection_state (name, id, state, position, version) VALUES ('reminders', " + tx.quote(session) +
                ", " + tx.quote(state.dump()) + ", " + std::to_string(evs.back().position.value()) + ", " +
                std::to_string(evs.back().version.value()) +
                ") ON CONFLICT (name, id) DO UPDATE SET state = excluded.state, position = excluded.position, version = "
                "excluded.version");
        tx.commit();
    }
    std::int64_t version(const std::string& session) {
        auto evs = aggregate(session);
        return evs.empty() ? 0 : evs.back()["aggregate_version"].get<std::int64_t>();
    }
};

std::string rid() { return Uuid::v4().str(); }

}  // namespace

TEST_CASE("reminders fire once each when due, with two memory processors, one killed and restarted", "[integration][scheduler]") {
    Env s;
    std::map<std::string, std::string> env = {{"SCHEDULER_POLL_MS", "200"}, {"LOG_LEVEL", "info"}};
    auto p1 = s.start("memory-processor/engram-memory-processor", env);
    auto p2 = s.start("memory-processor/engram-memory-processor", env);
    const std::string session = "session:telegram:42", other = "session:web:other";
    s.append({{"type", "MessageReceived"},
              {"aggregate_id", session},
              {"data", {{"channel", "telegram"}, {"text", "remind me"}, {"user_id", "telegram:42"}, {"session_id", session}}}});
    const auto late = rid(), soon = rid(), gone = rid(), later = rid(), far = rid(), elsewhere = rid();
    s.append(scheduled(session, late, at(std::chrono::seconds(-30)), "already due"));
    s.append(scheduled(session, soon, at(std::chrono::seconds(2)), "Call Anna"));
    s.append(scheduled(session, gone, at(std::chrono::seconds(3)), "cancelled before it was due"));
    s.append(cancelled(session, gone));
    s.append(scheduled(session, later, at(std::chrono::seconds(5)), "after the crash"));
    s.append(scheduled(session, far, at(std::chrono::hours(24 * 365)), "next year"));
    s.append(scheduled(other, elsewhere, at(std::chrono::seconds(1)), "in another session"));

    REQUIRE(testing::eventually([&] { return s.fired(session).count(soon) == 1; }, std::chrono::seconds(20)));
    p1->kill9();  // the survivor (and the restarted one) must not fire anything twice
    REQUIRE(testing::eventually([&] { return s.fired(session).count(later) == 1; }, std::chrono::seconds(20)));
    p1 = s.start("memory-processor/engram-memory-processor", env);
    std::this_thread::sleep_for(std::chrono::seconds(3));  // 15 polls of each instance

    auto f = s.fired(session);
    CHECK(f == std::map<std::string, int>{{late, 1}, {soon, 1}, {later, 1}});
    CHECK(s.fired(other) == std::map<std::string, int>{{elsewhere, 1}});
    // The trigger: in the session, with the reminder's words and the deterministic id.
    for (const auto& e : s.aggregate(session)) {
        if (e["type"] != "TriggerReceived" || e["data"].value("reminder_id", "") != soon) continue;
        CHECK(e["data"]["message"] == "Reminder: Call Anna");
        CHECK(e["data"]["channel"] == "telegram");
        CHECK(e["data"]["user_id"] == "telegram:42");
        CHECK(e["data"]["context"]["reminder"]["timezone"] == "Europe/Berlin");
        CHECK(e["id"] == Uuid::v5(*Uuid::parse(soon), "fired").str());
        CHECK(e["metadata"]["source"] == "scheduler");
    }
    // The due list is a projection like the others: what is persisted equals a fold from the log.
    auto head = s.version(session);
    REQUIRE(testing::eventually(
        [&] {
            auto r = s.client.get("/projections/reminders/" + http::url_encode(session));
            return r.ok() && r->status == 200 && r->json()["state"]["pending"].size() == 1;
        },
        std::chrono::seconds(10)));
    auto persisted = s.client.get("/projections/reminders/" + http::url_encode(session))->json();
    auto folded = s.client
                      .get("/projections/reminders/" + http::url_encode(session) +
                           "?as_of=" + std::to_string(persisted["position"].get<std::int64_t>()))
                      ->json();
    CHECK(persisted["state"] == folded["state"]);
    CHECK(persisted["state"]["pending"][0]["reminder_id"] == far);
    CHECK(persisted["state"]["finished"].size() == 4);
    CHECK(head == 10);  // 7 appended, 3 fired: nothing else

    // Rebuilt from scratch by the CLI: the same rows (state, position and the version the scheduler
    // appends on), and nothing fires again from them.
    auto rows = [&] {
        pqxx::connection c(s.db());
        pqxx::read_transaction tx(c);
        std::map<std::string, std::string> out;
        for (auto row : tx.exec("SELECT id, state::text || ' ' || position || ' ' || version FROM projection_state WHERE name = "
                                "'reminders' ORDER BY id"))
            out[row[0].c_str()] = row[1].c_str();
        return out;
    };
    p1.reset();
    p2.reset();  // stopped, so that the rows stay put while compared
    auto before = rows();
    REQUIRE(before.size() == 2);
    auto rebuilt = testing::run({testing::build_dir() + "/interfaces/cli/engram", "--url", s.url(), "--database-url", s.db(),
                                 "projections", "rebuild", "reminders"});
    INFO(rebuilt.output);
    REQUIRE(rebuilt.exit_code == 0);
    CHECK(rows() == before);
    p1 = s.start("memory-processor/engram-memory-processor", env);
    std::this_thread::sleep_for(std::chrono::seconds(1));
    CHECK(s.fired(session) == f);
}

TEST_CASE("a scheduler that read a reminder before it was cancelled does not fire it", "[integration][scheduler]") {
    // No memory processor: the test writes the projection row itself, so the scheduler's view can be
    // made stale on purpose (it read the state; the session moved on since).
    Env s;
    const std::string session = "session:web:stale";
    const auto r1 = rid();
    s.append(scheduled(session, r1, at(std::chrono::seconds(-5)), "stale"));
    auto write_state = [&] { s.write_reminders_row(session); };
    write_state();
    s.append(cancelled(session, r1));  // not folded into the row yet

    memory_processor::Scheduler sched({s.db(), s.url(), "", std::chrono::milliseconds(100)});
    auto round = sched.tick();
    REQUIRE(round);
    CHECK(round->due == 1);
    CHECK(round->fired == 0);  // the store refused the stale version; the events since hold the cancel
    CHECK(round->deferred == 0);
    CHECK(s.fired(session).empty());

    write_state();  // the projection caught up: nothing is due any more
    round = sched.tick();
    REQUIRE(round);
    CHECK(round->due == 0);
    CHECK(s.fired(session).empty());

    // A current view fires; a second scheduler working from the same (now stale) row stores nothing new.
    // Traffic after the row's version (a chat going on, a type the projection never folds) does not
    // hold a reminder back: the append is tried again on the session's version.
    const auto r2 = rid();
    s.append(scheduled(session, r2, at(std::chrono::seconds(-1)), "fires"));
    write_state();
    s.append({{"type", "MemoryRecalled"},
              {"aggregate_id", session},
              {"data", {{"user_id", "web:stale"}, {"query", "q"}, {"results", json::array()}}}});
    round = sched.tick();
    REQUIRE(round);
    CHECK(round->fired == 1);
    memory_processor::Scheduler other({s.db(), s.url(), "", std::chrono::milliseconds(100)});
    REQUIRE(other.tick());
    CHECK(s.fired(session) == std::map<std::string, int>{{r2, 1}});
}

TEST_CASE("the scheduler pages past sessions it cannot settle yet, and survives a database error", "[integration][scheduler]") {
    Env s;
    // Three sessions due, pages of one: each round reaches all of them.
    std::vector<std::string> sessions = {"session:web:p1", "session:web:p2", "session:web:p3"};
    for (const auto& session : sessions) {
        s.append(scheduled(session, rid(), at(std::chrono::seconds(-10)), "paged"));
        s.write_reminders_row(session);
    }
    memory_processor::SchedulerOptions o{s.db(), s.url(), "", std::chrono::milliseconds(100)};
    o.max_sessions_per_poll = 1;
    memory_processor::Scheduler sched(o);
    auto round = sched.tick();
    REQUIRE(round);
    CHECK(round->fired == 3);
    for (const auto& session : sessions) CHECK(s.fired(session).size() == 1);
    // The rows still say "due" (no memory processor folds the triggers): a second round appends
    // nothing new, and the store holds each trigger once.
    memory_processor::Scheduler fresh(o);
    REQUIRE(fresh.tick());
    for (const auto& session : sessions) CHECK(s.fired(session).begin()->second == 1);

    {  // a row the scheduler cannot read: an error for this round, not the end of the process
        pqxx::connection c(s.db());
        pqxx::work tx(c);
        tx.exec("ALTER TABLE projection_state RENAME TO projection_state_away");
        tx.commit();
    }
    auto broken = sched.tick();
    REQUIRE_FALSE(broken);
    CHECK(broken.error().code == "database");
    {
        pqxx::connection c(s.db());
        pqxx::work tx(c);
        tx.exec("ALTER TABLE projection_state_away RENAME TO projection_state");
        tx.commit();
    }
    CHECK(sched.tick());
}

TEST_CASE("a long session's first reminder starts its reminders row on the whole session, read in slices",
          "[integration][scheduler]") {
    Env s;
    const std::string session = "session:web:long";
    for (int b = 0; b < 25; ++b) {  // 2 500 messages before any reminder
        json batch = {{"aggregate_id", session}, {"events", json::array()}};
        for (int i = 0; i < 100; ++i)
            batch["events"].push_back({{"type", "MessageReceived"},
                                       {"aggregate_id", session},
                                       {"data",
                                        {{"channel", "web"},
                                         {"text", "m" + std::to_string(b * 100 + i)},
                                         {"user_id", "web:long"},
                                         {"session_id", session}}}});
        s.append(batch);
    }
    const auto r = rid();
    s.append(scheduled(session, r, at(std::chrono::hours(1)), "later"));
    auto proc = s.start("memory-processor/engram-memory-processor", {{"SCHEDULER_POLL_MS", "0"}});
    REQUIRE(testing::eventually(
        [&] {
            auto p = s.client.get("/projections/reminders/" + http::url_encode(session));
            return p.ok() && p->status == 200 && p->json()["state"]["pending"].size() == 1;
        },
        std::chrono::seconds(60)));
    pqxx::connection c(s.db());
    pqxx::read_transaction tx(c);
    auto row = tx.exec("SELECT version FROM projection_state WHERE name = 'reminders' AND id = " + tx.quote(session));
    REQUIRE(row.size() == 1);
    CHECK(row[0][0].as<std::int64_t>() == 2501);
}
