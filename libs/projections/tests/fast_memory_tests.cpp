#include <catch2/catch.hpp>

#include <algorithm>

#include "engram/projections/fast_memory.h"
#include "helpers.h"

using namespace engram;
using namespace engram::projections;
using nlohmann::json;
using test::ev;

namespace {

const std::string U = "user:web:alice";

json mem(std::string text, json extra = json::object()) {
    json d{{"user_id", "web:alice"}, {"text", std::move(text)}};
    d.update(extra);
    return d;
}

json run(std::vector<events::Event> evs) { return fold(fast_memory(), U, evs); }

std::vector<std::string> texts(const json& s) {
    std::vector<std::string> out;
    for (const auto& m : s["memories"]) out.push_back(m["text"]);
    return out;
}

}  // namespace

TEST_CASE("fast_memory: MemoryStored adds a memory with the event id and default importance", "[unit][projections]") {
    auto a = ev("MemoryStored", U, mem("Alice prefers tea to coffee."), 3);
    auto b = ev("MemoryStored", U, mem("Alice has a cat.", {{"importance", 0.9}, {"tags", {"pets"}}}), 4);
    json s = run({a, b});
    REQUIRE(s["user_id"] == "web:alice");
    REQUIRE(s["position"] == 4);
    REQUIRE(s["memories"].size() == 2);
    // most important first
    REQUIRE(s["memories"][0]["memory_id"] == b.id.str());
    REQUIRE(s["memories"][0]["importance"] == 0.9);
    REQUIRE(s["memories"][0]["tags"] == json{"pets"});
    REQUIRE(s["memories"][0]["position"] == 4);
    REQUIRE(s["memories"][1]["memory_id"] == a.id.str());
    REQUIRE(s["memories"][1]["importance"] == 0.5);
    REQUIRE_FALSE(s["memories"][1].contains("tags"));
    REQUIRE(s["tokens"] == estimate_tokens("Alice prefers tea to coffee.") + estimate_tokens("Alice has a cat."));
}

TEST_CASE("fast_memory: equal importance ranks the most recent first", "[unit][projections]") {
    json s = run({ev("MemoryStored", U, mem("old"), 1), ev("MemoryStored", U, mem("new"), 2)});
    REQUIRE(texts(s) == std::vector<std::string>{"new", "old"});
}

TEST_CASE("fast_memory: the same text stored again refreshes instead of duplicating", "[unit][projections]") {
    auto a = ev("MemoryStored", U, mem("Alice likes jazz."), 1);
    auto b = ev("MemoryStored", U, mem("Other."), 2);
    auto again = ev("MemoryStored", U, mem("Alice likes jazz.", {{"importance", 0.8}}), 3);
    json s = run({a, b, again});
    REQUIRE(s["memories"].size() == 2);
    REQUIRE(s["memories"][0]["text"] == "Alice likes jazz.");
    REQUIRE(s["memories"][0]["memory_id"] == a.id.str());  // keeps its id
    REQUIRE(s["memories"][0]["importance"] == 0.8);
    REQUIRE(s["memories"][0]["position"] == 3);
    // without an importance the refresh keeps the earlier one, and moves it to most recent
    json t = run({ev("MemoryStored", U, mem("x", {{"importance", 0.7}}), 1), ev("MemoryStored", U, mem("x"), 2)});
    REQUIRE(t["memories"].size() == 1);
    REQUIRE(t["memories"][0]["importance"] == 0.7);
}

TEST_CASE("fast_memory: profile memories (kind profile or tag profile, with a key) set the profile", "[unit][projections]") {
    auto tz = ev("MemoryStored", U, mem("Alice's timezone is Europe/Paris.", {{"kind", "profile"}, {"key", "timezone"}}), 1);
    auto name = ev("MemoryStored", U, mem("Her name is Alice.", {{"tags", {"profile"}}, {"key", "name"}, {"value", "Alice"}}), 2);
    auto tz2 =
        ev("MemoryStored", U,
           mem("Alice moved: timezone Asia/Tokyo.", {{"kind", "profile"}, {"key", "timezone"}, {"value", "Asia/Tokyo"}}), 3);
    json s = run({tz, name});
    REQUIRE(s["profile"] == json{{"timezone", "Alice's timezone is Europe/Paris."}, {"name", "Alice"}});
    REQUIRE(s["memories"].empty());
    REQUIRE(s["tokens"] == estimate_tokens("timezone: Alice's timezone is Europe/Paris.") + estimate_tokens("name: Alice"));
    s = run({tz, name, tz2});
    REQUIRE(s["profile"]["timezone"] == "Asia/Tokyo");
    // kind profile without a key is an ordinary memory
    json k = run({ev("MemoryStored", U, mem("Alice is a nurse.", {{"kind", "profile"}}), 1)});
    REQUIRE(k["profile"].empty());
    REQUIRE(k["memories"].size() == 1);
}

TEST_CASE("fast_memory: supersedes removes the earlier memory", "[unit][projections]") {
    auto a = ev("MemoryStored", U, mem("Alice lives in Paris."), 1);
    auto b = ev("MemoryStored", U, mem("Alice lives in Lyon.", {{"supersedes", a.id.str()}}), 2);
    json s = run({a, b});
    REQUIRE(texts(s) == std::vector<std::string>{"Alice lives in Lyon."});
}

TEST_CASE("fast_memory: expires_at is judged against the event time", "[unit][projections]") {
    // expires between the 1st and 3rd event's commit times
    std::string at = format_rfc3339(test::time_at(2));
    auto a = ev("MemoryStored", U, mem("Alice is travelling this week.", {{"expires_at", at}}), 1);
    auto b = ev("MemoryStored", U, mem("later"), 3);
    REQUIRE(run({a})["memories"].size() == 1);
    REQUIRE(texts(run({a, b})) == std::vector<std::string>{"later"});
    // stored already expired: not added
    REQUIRE(run({ev("MemoryStored", U, mem("gone", {{"expires_at", format_rfc3339(test::time_at(0))}}), 1)})["memories"].empty());
}

TEST_CASE("fast_memory: FastMemoryUpdated is ignored", "[unit][projections]") {
    auto a = ev("MemoryStored", U, mem("x"), 1);
    auto u = ev("FastMemoryUpdated", U,
                {{"user_id", "web:alice"}, {"summary", "s"}, {"memories", json::array()}, {"tokens", 0}, {"position", 1}}, 2);
    json s = run({a, u});
    REQUIRE(s == run({a}));
    REQUIRE(s["position"] == 1);
}

TEST_CASE("fast_memory: keeps the most important memories within ~500 tokens", "[unit][projections]") {
    // 60 memories of exactly 20 tokens (80 chars) each: 25 fit in 500 tokens.
    std::vector<events::Event> evs;
    for (int i = 0; i < 60; ++i) {
        std::string text = "memory " + std::to_string(100 + i) + " ";
        text += std::string(80 - text.size(), 'x');
        double importance = ((i * 37) % 60) / 60.0;  // a permutation of 0..59, scaled
        evs.push_back(ev("MemoryStored", U, mem(text, {{"importance", importance}}), i + 1));
    }
    json s = run(evs);
    REQUIRE(s["tokens"].get<std::size_t>() <= kFastMemoryTokenBudget);
    REQUIRE(s["memories"].size() == 25);
    REQUIRE(s["tokens"] == 25 * 20);
    // exactly the 25 most important, in importance order
    double last = 2;
    for (const auto& m : s["memories"]) {
        double imp = m["importance"];
        REQUIRE(imp < last);
        REQUIRE(imp >= 35 / 60.0 - 1e-9);
        last = imp;
    }
    // tokens is what is kept
    std::size_t sum = 0;
    for (const auto& m : s["memories"]) sum += estimate_tokens(m["text"].get<std::string>());
    REQUIRE(s["tokens"] == sum);
}

TEST_CASE("fast_memory: a memory larger than the budget is skipped - the profile is charged first", "[unit][projections]") {
    auto big = ev("MemoryStored", U, mem(std::string(2400, 'b'), {{"importance", 1.0}}), 1);
    auto small = ev("MemoryStored", U, mem("small", {{"importance", 0.1}}), 2);
    json s = run({big, small});
    REQUIRE(texts(s) == std::vector<std::string>{"small"});

    auto p = ev("MemoryStored", U, mem(std::string(1960, 'p'), {{"kind", "profile"}, {"key", "bio"}}),
                3);                                                // 491 + "bio: " => 492 tokens
    auto m = ev("MemoryStored", U, mem(std::string(40, 'm')), 4);  // 10 tokens: no longer fits
    s = run({small, p, m});
    REQUIRE(s["profile"].contains("bio"));
    REQUIRE(texts(s) == std::vector<std::string>{"small"});
    REQUIRE(s["tokens"] == estimate_tokens("bio: " + std::string(1960, 'p')) + 2);
    // a profile value that alone exceeds the budget is refused
    json r = run({ev("MemoryStored", U, mem(std::string(2100, 'q'), {{"kind", "profile"}, {"key", "bio"}}), 1)});
    REQUIRE(r["profile"].empty());
    REQUIRE(r["position"] == 1);
}

TEST_CASE("fast_memory: estimate_tokens is ceil(code points / 4)", "[unit][projections]") {
    REQUIRE(estimate_tokens("") == 0);
    REQUIRE(estimate_tokens("a") == 1);
    REQUIRE(estimate_tokens("abcd") == 1);
    REQUIRE(estimate_tokens("abcde") == 2);
    REQUIRE(estimate_tokens("\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9") == 1);  // 4 x U+00E9
}

TEST_CASE("fast_memory_summary renders the profile then the memories", "[unit][projections]") {
    REQUIRE(fast_memory_summary(fast_memory().initial(U)) == "");
    json s = run({ev("MemoryStored", U, mem("Alice", {{"kind", "profile"}, {"key", "name"}}), 1),
                  ev("MemoryStored", U, mem("Likes tea.", {{"importance", 0.2}}), 2),
                  ev("MemoryStored", U, mem("Allergic to nuts.", {{"importance", 1}}), 3)});
    REQUIRE(fast_memory_summary(s) == "Profile:\n- name: Alice\nMemories:\n- Allergic to nuts.\n- Likes tea.\n");
}

TEST_CASE("fast_memory_changed ignores position", "[unit][projections]") {
    auto a = ev("MemoryStored", U, mem("x"), 1);
    json s1 = run({a});
    json s2 = s1;
    s2["position"] = 99;
    REQUIRE_FALSE(fast_memory_changed(s1, s2));
    // a refresh that changes nothing visible (same text, same importance) is not a change
    json s3 = fast_memory().apply(s1, ev("MemoryStored", U, mem("x"), 5));
    REQUIRE(s3["position"] == 5);
    REQUIRE_FALSE(fast_memory_changed(s1, s3));
    // content changes are
    REQUIRE(fast_memory_changed(s1, fast_memory().apply(s1, ev("MemoryStored", U, mem("y"), 6))));
    REQUIRE(fast_memory_changed(s1, fast_memory().apply(s1, ev("MemoryStored", U, mem("x", {{"importance", 0.9}}), 6))));
    REQUIRE(fast_memory_changed(
        s1, fast_memory().apply(s1, ev("MemoryStored", U, mem("Al", {{"kind", "profile"}, {"key", "name"}}), 6))));
    REQUIRE(fast_memory_changed(fast_memory().initial(U), s1));
}
