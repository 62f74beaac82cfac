#include <catch2/catch.hpp>

#include "engram/store/append.h"
#include "engram/store/query.h"

using namespace engram;
using namespace engram::store;
using nlohmann::json;

TEST_CASE("read query parameters parse with defaults and bounds", "[unit][store]") {
    auto q = parse_read_query({});
    REQUIRE(q.ok());
    CHECK(q->after == GlobalPosition{0});
    CHECK(q->limit == 100);
    auto full =
        parse_read_query({{"after", "5"}, {"limit", "1000"}, {"type", "Message*"}, {"aggregate_id", "a"}, {"until", "9"}});
    REQUIRE(full.ok());
    CHECK(full->after == GlobalPosition{5});
    CHECK(full->until_position == GlobalPosition{9});
    CHECK(*full->type_glob == "Message*");
    auto t = parse_read_query({{"until", "2026-11-22T10:00:00.123Z"}});
    REQUIRE(t.ok());
    CHECK(t->until_time);
    for (auto [k, v] : std::vector<std::pair<std::string, std::string>>{{"after", "-1"},
                                                                        {"after", "x"},
                                                                        {"limit", "0"},
                                                                        {"limit", "1001"},
                                                                        {"type", "*x"},
                                                                        {"until", "soon"},
                                                                        {"aggregate_id", ""}}) {
        auto r = parse_read_query({{k, v}});
        INFO(k << "=" << v);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "invalid_parameter");
        CHECK(r.error().detail.find("'" + k + "'") != std::string::npos);
    }
}

TEST_CASE("aggregate query parameters parse", "[unit][store]") {
    CHECK(parse_aggregate_query({})->from == AggregateVersion{1});
    CHECK(parse_aggregate_query({{"from_version", "3"}})->from == AggregateVersion{3});
    CHECK_FALSE(parse_aggregate_query({{"from_version", "0"}}).ok());
    CHECK_FALSE(parse_aggregate_query({{"limit", "5000"}}).ok());
}

TEST_CASE("type filters become SQL conditions with LIKE metacharacters escaped", "[unit][store]") {
    auto q = [](const std::string& s) { return "'" + s + "'"; };
    CHECK(type_condition("Message*", q) == "type LIKE 'Message%'");
    CHECK(type_condition("My_Type*", q) == "type LIKE 'My\\_Type%'");
    CHECK(type_condition("Exact", q) == "type = 'Exact'");
    CHECK(type_condition("*", q) == "TRUE");
}

TEST_CASE("append bodies are checked against the catalog's schemas", "[unit][store]") {
    auto ok = parse_append({{"type", "X"}, {"aggregate_id", "a"}, {"data", {{"anything", 1}}}});
    REQUIRE(ok.ok());
    auto bad = parse_append({{"type", "MessageReceived"}, {"aggregate_id", "a"}, {"data", {{"text", 5}}}});
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == "schema_violation");
    auto batch = parse_append(
        {{"aggregate_id", "a"}, {"events", {{{"type", "X"}}, {{"type", "MessageReceived"}, {"data", {{"text", 5}}}}}}});
    REQUIRE_FALSE(batch.ok());
    CHECK(batch.error().detail.rfind("events[1]: ", 0) == 0);
}

TEST_CASE("the append answer's text equals its DOM's dump", "[unit][store]") {
    store::AppendOutcome o;
    for (int i = 0; i < 3; ++i)
        o.events.push_back(store::Appended{Uuid::v4(), GlobalPosition(1000 + i), AggregateVersion(7 + i),
                                           SysTime(std::chrono::milliseconds(1764633600123 + i))});
    CHECK(store::outcome_text(o) == store::outcome_json(o).dump());
    o.events.clear();
    CHECK(store::outcome_text(o) == store::outcome_json(o).dump());
}
