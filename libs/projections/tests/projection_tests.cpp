#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

#include "engram/events/catalog.h"
#include "engram/projections/projections.h"
#include "helpers.h"

using namespace engram;
using namespace engram::projections;
using nlohmann::json;

TEST_CASE("find and all list the three projections", "[unit][projections]") {
    REQUIRE(all().size() == 3);
    REQUIRE(find("reminders") == &reminders());
    REQUIRE(find("conversation") == &conversation());
    REQUIRE(find("fast_memory") == &fast_memory());
    REQUIRE(find("nope") == nullptr);
    REQUIRE(find("") == nullptr);
    REQUIRE(conversation().name() == "conversation");
    REQUIRE(fast_memory().name() == "fast_memory");
}

TEST_CASE("aggregate_of validates the instance id", "[unit][projections]") {
    auto ok = conversation().aggregate_of("session:web:abc");
    REQUIRE(ok);
    REQUIRE(*ok == "session:web:abc");
    auto u = fast_memory().aggregate_of("user:42");
    REQUIRE(u);
    REQUIRE(*u == "user:42");
    REQUIRE(*fast_memory().aggregate_of("user:telegram:123") == "user:telegram:123");

    for (std::string bad : {"user:42", "session:", "", "web:abc", "Session:web:abc", "sessions:x"}) {
        auto r = conversation().aggregate_of(bad);
        INFO(bad);
        REQUIRE_FALSE(r);
        REQUIRE(r.error().code == "invalid_parameter");
    }
    for (std::string bad : {"session:web:abc", "user:", "", "42", "users:1"}) {
        auto r = fast_memory().aggregate_of(bad);
        INFO(bad);
        REQUIRE_FALSE(r);
        REQUIRE(r.error().code == "invalid_parameter");
    }
    REQUIRE_FALSE(conversation().aggregate_of("session:web:a\nb"));              // control characters
    REQUIRE_FALSE(fast_memory().aggregate_of("user:" + std::string(300, 'x')));  // too long
}

TEST_CASE("event_types are catalog types, and other types leave the state unchanged", "[unit][projections]") {
    const auto& cat = events::Catalog::builtin();
    for (const Projection* p : all())
        for (auto t : p->event_types()) {
            INFO(t);
            REQUIRE(cat.known(t));
        }
    auto conv = conversation().event_types();
    REQUIRE(conv.size() == 14);
    REQUIRE(std::find(conv.begin(), conv.end(), "MemoryStored") == conv.end());
    auto fm = fast_memory().event_types();
    REQUIRE(fm == std::vector<std::string_view>{"MemoryStored"});

    using test::ev;
    json s = conversation().initial("session:web:1");
    for (auto t : {"WebhookReceived", "ArtifactCreated", "MemoryRecalled", "FastMemoryUpdated", "SomethingNew"}) {
        INFO(t);
        REQUIRE(conversation().apply(s, ev(t, "session:web:1", {{"x", 1}}, 5)) == s);
    }
    json f = fast_memory().initial("user:1");
    for (auto t : {"FastMemoryUpdated", "MessageReceived", "SomethingNew"}) {
        INFO(t);
        REQUIRE(fast_memory().apply(f, ev(t, "user:1", {{"user_id", "1"}, {"text", "hi"}, {"summary", "x"}}, 5)) == f);
    }
}

TEST_CASE("initial states", "[unit][projections]") {
    json c = conversation().initial("session:web:abc");
    REQUIRE(c["session_id"] == "session:web:abc");
    REQUIRE(c["position"] == 0);
    REQUIRE(c["messages"] == json::array());
    REQUIRE(c["tool_calls"] == json::array());
    REQUIRE(c["run"] == json{{"state", "idle"}});
    REQUIRE(c["thinking"] == json::array());
    json f = fast_memory().initial("user:telegram:42");
    REQUIRE(f["user_id"] == "telegram:42");
    REQUIRE(f["position"] == 0);
    REQUIRE(f["profile"] == json::object());
    REQUIRE(f["memories"] == json::array());
    REQUIRE(f["tokens"] == 0);
}

TEST_CASE("fold skips events of other aggregates - apply ignores them too", "[unit][projections]") {
    using test::ev;
    std::vector<events::Event> evs = {
        ev("MessageReceived", "session:web:1",
           {{"channel", "web"}, {"text", "mine"}, {"user_id", "web:u"}, {"session_id", "session:web:1"}}, 1),
        ev("MessageReceived", "session:web:2",
           {{"channel", "web"}, {"text", "other"}, {"user_id", "web:u"}, {"session_id", "session:web:2"}}, 2),
        ev("MemoryStored", "user:web:u", {{"user_id", "web:u"}, {"text", "likes tea"}}, 3),
        ev("MemoryStored", "user:web:v", {{"user_id", "web:v"}, {"text", "likes coffee"}}, 4),
    };
    json c = fold(conversation(), "session:web:1", evs);
    REQUIRE(c["messages"].size() == 1);
    REQUIRE(c["messages"][0]["text"] == "mine");
    REQUIRE(c["position"] == 1);
    // apply alone also refuses another aggregate's event
    REQUIRE(conversation().apply(c, evs[1]) == c);

    json f = fold(fast_memory(), "user:web:u", evs);
    REQUIRE(f["memories"].size() == 1);
    REQUIRE(f["memories"][0]["text"] == "likes tea");
    REQUIRE(f["position"] == 3);
    REQUIRE(fast_memory().apply(f, evs[3]) == f);

    // an invalid id folds nothing
    json bad = fold(conversation(), "user:web:u", evs);
    REQUIRE(bad["messages"].empty());
    REQUIRE(bad["position"] == 0);
}

TEST_CASE("an event already reflected (position <= state position) is ignored", "[unit][projections]") {
    using test::ev;
    auto m = ev("MessageReceived", "session:web:1",
                {{"channel", "web"}, {"text", "a"}, {"user_id", "web:u"}, {"session_id", "session:web:1"}}, 7);
    json once = conversation().apply(conversation().initial("session:web:1"), m);
    REQUIRE(conversation().apply(once, m) == once);
    auto older = ev("MessageReceived", "session:web:1",
                    {{"channel", "web"}, {"text", "b"}, {"user_id", "web:u"}, {"session_id", "session:web:1"}}, 3);
    REQUIRE(conversation().apply(once, older) == once);

    auto s = ev("MemoryStored", "user:u", {{"user_id", "u"}, {"text", "t"}}, 9);
    json f = fast_memory().apply(fast_memory().initial("user:u"), s);
    REQUIRE(fast_memory().apply(f, s) == f);
}

TEST_CASE("fold_from continues a fold", "[unit][projections]") {
    using test::ev;
    std::vector<events::Event> a = {ev("ThinkingGenerated", "session:web:1", {{"text", "t1"}}, 1)};
    std::vector<events::Event> b = {ev("ThinkingGenerated", "session:web:1", {{"text", "t2"}}, 2)};
    auto ab = a;
    ab.insert(ab.end(), b.begin(), b.end());
    REQUIRE(fold_from(conversation(), fold(conversation(), "session:web:1", a), b) == fold(conversation(), "session:web:1", ab));
}
