#include <catch2/catch.hpp>

#include "engram/events/catalog.h"
#include "engram/projections/projections.h"
#include "helpers.h"

using namespace engram;
using namespace engram::projections;
using namespace engram::projections::test;
using nlohmann::json;

namespace {

const std::string kSession = "session:telegram:42";

json scheduled(const std::string& id, const std::string& due, const std::string& text = "Call Anna") {
    return {{"reminder_id", id},
            {"session_id", kSession},
            {"user_id", "telegram:42"},
            {"text", text},
            {"due_at", due},
            {"timezone", "Europe/Berlin"},
            {"local_time", "2026-12-02T09:00:00+01:00"},
            {"channel", "telegram"}};
}

std::string rid(int n) { return Uuid::v5(test_ns(), "reminder" + std::to_string(n)).str(); }

json fold_all(const std::vector<events::Event>& evs) { return fold(reminders(), kSession, evs); }

}  // namespace

TEST_CASE("reminders: pending ones sorted by due time, the earliest as next_due_at", "[unit][projections]") {
    auto s = fold_all({ev("ReminderScheduled", kSession, scheduled(rid(1), "2026-12-02T08:00:00Z"), 1),
                       ev("ReminderScheduled", kSession, scheduled(rid(2), "2026-12-01T20:00:00.750+01:00"), 2),
                       ev("MessageReceived", kSession, {{"text", "thanks"}}, 3)});
    REQUIRE(s["pending"].size() == 2);
    CHECK(s["pending"][0]["reminder_id"] == rid(2));
    CHECK(s["pending"][0]["due_at"] == "2026-12-01T19:00:00Z");  // UTC, to the second
    CHECK(s["pending"][1]["due_at"] == "2026-12-02T08:00:00Z");
    CHECK(s["next_due_at"] == "2026-12-01T19:00:00Z");
    CHECK(s["pending"][1]["timezone"] == "Europe/Berlin");
    CHECK(s["pending"][1]["local_time"] == "2026-12-02T09:00:00+01:00");
    CHECK(s["position"] == 2);  // the message is not folded
    for (const auto& r : s["pending"]) {
        auto st = events::Catalog::builtin().validate("ReminderScheduled", json{{"reminder_id", r["reminder_id"]},
                                                                                {"session_id", kSession},
                                                                                {"text", r["text"]},
                                                                                {"due_at", r["due_at"]},
                                                                                {"timezone", r["timezone"]}});
        CHECK(st);
    }
}

TEST_CASE("reminders: a fired or cancelled reminder leaves pending for finished; late ones change nothing",
          "[unit][projections]") {
    std::vector<events::Event> evs = {
        ev("ReminderScheduled", kSession, scheduled(rid(1), "2026-12-02T08:00:00Z"), 1),
        ev("ReminderScheduled", kSession, scheduled(rid(2), "2026-12-03T08:00:00Z", "Water the plants"), 2),
        ev("TriggerReceived", kSession, {{"message", "an ordinary trigger"}, {"source", "api"}}, 3),
        ev("TriggerReceived", kSession, {{"message", "Reminder: Call Anna"}, {"reminder_id", rid(1)}}, 4),
        ev("ReminderCancelled", kSession, {{"reminder_id", rid(2)}, {"session_id", kSession}}, 5),
        // Late or repeated: cancelling a fired one, firing a cancelled one, scheduling an id again.
        ev("ReminderCancelled", kSession, {{"reminder_id", rid(1)}, {"session_id", kSession}}, 6),
        ev("TriggerReceived", kSession, {{"message", "Reminder"}, {"reminder_id", rid(2)}}, 7),
        ev("ReminderScheduled", kSession, scheduled(rid(1), "2030-01-01T00:00:00Z"), 8),
    };
    auto s = fold_all(evs);
    CHECK(s["pending"].empty());
    CHECK(s["next_due_at"].is_null());
    REQUIRE(s["finished"].size() == 2);
    CHECK(s["finished"][0]["reminder_id"] == rid(1));
    CHECK(s["finished"][0]["status"] == "fired");
    CHECK(s["finished"][0]["event_id"] == id_of(evs[3]));
    CHECK(s["finished"][1]["status"] == "cancelled");
    CHECK(s["position"] == 8);
    // Folded twice (a redelivery), or in two halves through JSON text: the same state.
    CHECK(fold_from(reminders(), s, evs) == s);
    auto half = fold_all({evs.begin(), evs.begin() + 4});
    CHECK(fold_from(reminders(), json::parse(half.dump()), {evs.begin() + 4, evs.end()}) == s);
}

TEST_CASE("reminders: bounded, and malformed or foreign events are ignored", "[unit][projections]") {
    std::vector<events::Event> evs;
    for (int i = 1; i <= static_cast<int>(kMaxPendingReminders) + 5; ++i)
        evs.push_back(ev("ReminderScheduled", kSession, scheduled(rid(i), "2027-01-01T00:00:00Z"), i));
    auto s = fold_all(evs);
    CHECK(s["pending"].size() == kMaxPendingReminders);
    std::int64_t p = static_cast<std::int64_t>(evs.size());
    std::vector<events::Event> more;
    for (int i = 1; i <= static_cast<int>(kMaxFinishedReminders) + 10; ++i)
        more.push_back(ev("ReminderCancelled", kSession, {{"reminder_id", rid(i)}}, ++p));
    more.push_back(ev("ReminderScheduled", kSession, scheduled("", "2027-01-01T00:00:00Z"), ++p));
    more.push_back(ev("ReminderScheduled", kSession, scheduled(rid(999), "not a time"), ++p));
    more.push_back(ev("ReminderScheduled", kSession, scheduled(rid(998), "2027-01-01T00:00:00Z", ""), ++p));
    more.push_back(ev("ReminderScheduled", "session:web:other", scheduled(rid(997), "2027-01-01T00:00:00Z"), ++p));
    more.push_back(ev("ReminderScheduled", kSession, json::array(), ++p));
    s = fold_from(reminders(), s, more);
    CHECK(s["finished"].size() == kMaxFinishedReminders);
    CHECK(s["pending"].size() == kMaxPendingReminders - kMaxFinishedReminders - 10);
    CHECK(s["next_due_at"] == "2027-01-01T00:00:00Z");
    CHECK_FALSE(reminders().aggregate_of("user:42"));
    CHECK(normalize_due_at("2026-12-02T09:00:00+01:00") == "2026-12-02T08:00:00Z");
    CHECK_FALSE(normalize_due_at("2026-12-02"));
}
