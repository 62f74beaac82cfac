// POST /events against JSON built to hurt: nesting 100 000 levels deep, numbers no double holds,
// U+0000 that PostgreSQL cannot store, broken surrogates. Each is a 400 with the reason, nothing is
// written, and the store goes on serving; values within the limits round-trip as PostgreSQL keeps them.
#include "fixture.h"

#include "engram/core/json.h"
#include "engram/events/event.h"

#include <catch2/catch.hpp>

using namespace engram;
using engram::test::StoreFixture;
using nlohmann::json;

namespace {

// {"a":{"a":...{}...}} with `levels` objects: the innermost is `levels - 1` below the outermost.
std::string nested_objects(int levels) {
    std::string s;
    for (int i = 1; i < levels; ++i) s += "{\"a\":";
    return s + "{}" + std::string(static_cast<std::size_t>(levels - 1), '}');
}

json nested_value(int levels) {
    json v = json::object();
    for (int i = 1; i < levels; ++i) v = json{{"a", std::move(v)}};
    return v;
}

void require_refused(StoreFixture& f, const std::string& body, const std::string& code, const std::string& detail_part) {
    auto r = f.post_raw(body);
    INFO(r.body.substr(0, 300));
    REQUIRE(r.status == 400);
    auto j = r.json();
    CHECK(j["error"] == code);
    REQUIRE(j["detail"].is_string());
    CHECK(j["detail"].get<std::string>().find(detail_part) != std::string::npos);
    CHECK(f.count_rows() == 0);
    // Still serving, on the same connection.
    CHECK(f.get("/events?limit=1").status == 200);
}

}  // namespace

TEST_CASE("hostile JSON is a 400 with its reason, nothing is written, the store still serves", "[integration][store][json]") {
    StoreFixture f;
    const std::string deep = "nesting deeper than 64 levels";
    const std::string arrays = std::string(100000, '[') + std::string(100000, ']');  // 200 KB
    require_refused(f, arrays, "invalid_json", deep);
    require_refused(f, std::string(100000, '['), "invalid_json", deep);  // never closed
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":)" + nested_objects(100000) + "}", "invalid_json", deep);
    require_refused(f, R"({"aggregate_id":"a","events":[{"type":"X","data":)" + nested_objects(100000) + "}]}", "invalid_json",
                    deep);
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":{"x":1e400}})", "invalid_json",
                    "the body has a number out of range: 1e400");
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":{"x":-1e400}})", "invalid_json", "out of range");
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":{"x":1e-400}})", "invalid_json", "out of range");
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":{"x":123456789012345678901234567890}})", "invalid_json",
                    "integer beyond 64 bits");
    require_refused(f, R"({"type":"X","aggregate_id":"a","expected_version":99999999999999999999})", "invalid_json",
                    "integer beyond 64 bits");
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":{"t":"\ud800"}})", "invalid_json", "surrogate");
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":{"t":"\udc00x"}})", "invalid_json", "surrogate");
    require_refused(f, "{\"type\":\"X\",\"aggregate_id\":\"a\",\"data\":{\"t\":\"\xc3\x28\"}}", "invalid_json", "UTF-8");
    // A NUL byte used to end the document for the parser, the rest ignored (a fuzz finding).
    require_refused(f, std::string("{\"type\":\"X\",\"aggregate_id\":\"a\"}\0garbage", 39), "invalid_json",
                    "a NUL byte (at byte 32)");
    // U+0000: valid JSON, but jsonb cannot hold it; refused before the database, naming where.
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":{"t":"a\u0000b"}})", "invalid_event",
                    "field 'data' holds U+0000 at /t");
    require_refused(f, R"({"type":"X","aggregate_id":"a","data":{"list":[1,{"k\u0000":1}]}})", "invalid_event",
                    "field 'data' holds U+0000 at /list/1/k");
    require_refused(f, R"({"type":"X","aggregate_id":"a","metadata":{"note":"\u0000"}})", "invalid_event",
                    "field 'metadata' holds U+0000 at /note");
    require_refused(f, R"({"type":"X","aggregate_id":"a\u0000"})", "invalid_event", "aggregate_id");
    require_refused(f, R"({"aggregate_id":"a","events":[{"type":"X"},{"type":"Y","data":{"t":"\u0000"}}]})", "invalid_event",
                    "events[1]: field 'data' holds U+0000");
    // A catalog type changes nothing: refused while parsing, before its schema is checked.
    require_refused(f, R"({"type":"MessageReceived","aggregate_id":"a","data":)" + nested_objects(100000) + "}", "invalid_json",
                    deep);

    // After all of that, a good append.
    auto ok = f.post({{"type", "NoteTaken"}, {"aggregate_id", "user:42"}, {"data", {{"text", "hi"}}}});
    INFO(ok.body);
    CHECK(ok.status == 201);
    CHECK(f.count_rows() == 1);
}

TEST_CASE("data nested to the limit round-trips, one level more is refused", "[integration][store][json]") {
    StoreFixture f;
    // A single event: data's innermost object at depth 64 of the body.
    json deepest = nested_value(kMaxJsonDepth);
    json e = {{"type", "NoteTaken"}, {"aggregate_id", "deep:1"}, {"data", deepest}};
    REQUIRE(json_depth(e) == kMaxJsonDepth);
    auto r = f.post(e);
    INFO(r.body);
    REQUIRE(r.status == 201);
    auto id = r.json()["events"][0]["id"].get<std::string>();
    auto one = f.get("/events/" + id);
    REQUIRE(one.status == 200);
    auto envelope = one.json();  // the answer is the envelope: within the limit
    REQUIRE_FALSE(envelope.is_discarded());
    CHECK(envelope["data"] == deepest);
    // Lists wrap envelopes two levels further down: clients parse them with kMaxStoreAnswerDepth.
    auto list = f.get("/aggregates/deep:1/events");
    REQUIRE(list.status == 200);
    CHECK(list.json().is_discarded());
    CHECK(list.json(events::kMaxStoreAnswerDepth)["events"][0]["data"] == deepest);
    // The same content again is the same event (idempotent), so jsonb kept it exactly.
    e["id"] = id;
    CHECK(f.post(e).status == 200);

    // One more level: refused, nothing written.
    json deeper = {{"type", "NoteTaken"}, {"aggregate_id", "deep:2"}, {"data", nested_value(kMaxJsonDepth + 1)}};
    auto no = f.post(deeper);
    CHECK(no.status == 400);
    CHECK(no.json()["error"] == "invalid_json");
    // In a batch, data sits three levels down (events[i].data): 62 levels of its own fit.
    json batch = {{"aggregate_id", "deep:3"},
                  {"events", json::array({{{"type", "NoteTaken"}, {"data", nested_value(kMaxJsonDepth - 2)}}})}};
    CHECK(f.post(batch).status == 201);
    batch["events"][0]["data"] = nested_value(kMaxJsonDepth - 1);
    CHECK(f.post(batch).status == 400);
    CHECK(f.count_rows() == 2);
}

TEST_CASE("numbers and repeated keys are stored as PostgreSQL keeps them and read back the same", "[integration][store][json]") {
    StoreFixture f;
    const std::string id = Uuid::v4().str();
    // Repeated keys: the last one wins, in the parse as in jsonb; -0 is the integer 0.
    const std::string body = R"({"id":")" + id +
                             R"(","type":"NoteTaken","aggregate_id":"num:1","data":{"a":1,"a":2,"minus_zero":-0,)"
                             R"("minus_zero_float":-0.0,"big":1.5e300,"tiny":5e-324,"u64":18446744073709551615,)"
                             R"("i64":-9223372036854775808,"pi":3.141592653589793,"int_float":100.0}})";
    auto r = f.post_raw(body);
    INFO(r.body);
    REQUIRE(r.status == 201);
    auto ev = f.get("/events/" + id).json();
    REQUIRE(ev.is_object());
    const auto& d = ev["data"];
    CHECK(d["a"] == 2);
    CHECK(d.size() == 9);
    CHECK(d["minus_zero"].is_number_integer());
    CHECK(d["minus_zero"] == 0);
    CHECK(d["minus_zero_float"] == 0.0);
    CHECK(d["big"] == 1.5e300);  // jsonb prints it with 301 digits; it comes back the same double
    CHECK(d["tiny"] == 5e-324);
    CHECK(d["u64"].get<std::uint64_t>() == 18446744073709551615ULL);
    CHECK(d["i64"].get<std::int64_t>() == INT64_MIN);
    CHECK(d["pi"] == 3.141592653589793);
    CHECK(d["int_float"] == 100.0);
    // The same body again is the same content: 200, not a conflict, and so is the body without the
    // overwritten key (nlohmann's parse keeps the last one too).
    CHECK(f.post_raw(body).status == 200);
    auto without = json::parse(body);
    REQUIRE(without["data"]["a"] == 2);
    CHECK(f.post(without).status == 200);
    without["data"]["a"] = 1;
    CHECK(f.post(without).status == 409);
    CHECK(f.count_rows() == 1);
}
