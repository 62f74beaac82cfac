#include <catch2/catch.hpp>

#include <string>

#include "engram/events/codes.h"
#include "engram/events/event.h"

using namespace engram;
using namespace engram::events;
using nlohmann::json;

namespace {

const char* kId = "6f9619ff-8b86-4011-b42d-00cf4fc964ff";

json minimal() { return json{{"type", "MessageReceived"}, {"aggregate_id", "session:web:1"}}; }

json with(json j, const std::string& key, json value) {
    j[key] = std::move(value);
    return j;
}

json without(json j, const std::string& key) {
    j.erase(key);
    return j;
}

// The detail of a parse_new_event failure ("" when it succeeded), after checking the code.
std::string parse_error(const json& j) {
    auto r = parse_new_event(j);
    if (r) return "";
    CHECK(r.error().code == codes::invalid_event);
    return r.error().detail;
}

std::string append_error(const json& j) {
    auto r = parse_append_request(j);
    if (r) return "";
    CHECK(r.error().code == codes::invalid_event);
    return r.error().detail;
}

}  // namespace

TEST_CASE("parse_new_event accepts a minimal event and defaults data and metadata to {}", "[unit][events]") {
    auto r = parse_new_event(minimal());
    REQUIRE(r);
    CHECK(r->type == "MessageReceived");
    CHECK(r->aggregate_id == "session:web:1");
    CHECK_FALSE(r->id.has_value());
    CHECK(r->data == json::object());
    CHECK(r->metadata == json::object());
}

TEST_CASE("parse_new_event keeps id, data and metadata and ignores store-assigned fields", "[unit][events]") {
    json j = minimal();
    j["id"] = "6F9619FF-8B86-4011-B42D-00CF4FC964FF";
    j["data"] = {{"text", "hi"}, {"n", 1}};
    j["metadata"] = {{"source", "telegram"},
                     {"correlation_id", kId},
                     {"causation_id", kId},
                     {"user_id", "telegram:1"},
                     {"session_id", "session:telegram:1"},
                     {"trace", {{"any", "thing"}}},
                     {"attempt", 3}};
    j["position"] = 99;
    j["aggregate_version"] = 7;
    j["timestamp"] = "not even a time";
    j["unknown_field"] = true;
    auto r = parse_new_event(j);
    REQUIRE(r);
    REQUIRE(r->id);
    CHECK(r->id->str() == kId);
    CHECK(r->data == j["data"]);
    CHECK(r->metadata == j["metadata"]);
}

TEST_CASE("parse_new_event refuses a body that is not an object", "[unit][events]") {
    CHECK(parse_error(json::array({minimal()})) == "an event must be a JSON object");
    CHECK(parse_error("MessageReceived") == "an event must be a JSON object");
    CHECK(parse_error(nullptr) == "an event must be a JSON object");
    CHECK(parse_error(42) == "an event must be a JSON object");
}

TEST_CASE("parse_new_event checks the type field", "[unit][events]") {
    const std::string pascal = "field 'type' must be PascalCase ([A-Z][A-Za-z0-9]*, at most 128 characters)";
    CHECK(parse_error(without(minimal(), "type")) == "field 'type' is required");
    CHECK(parse_error(with(minimal(), "type", 5)) == "field 'type' must be a string");
    CHECK(parse_error(with(minimal(), "type", nullptr)) == "field 'type' must be a string");
    CHECK(parse_error(with(minimal(), "type", json::array({"A"}))) == "field 'type' must be a string");
    CHECK(parse_error(with(minimal(), "type", "")) == pascal);
    CHECK(parse_error(with(minimal(), "type", "messageReceived")) == pascal);
    CHECK(parse_error(with(minimal(), "type", "Message_Received")) == pascal);
    CHECK(parse_error(with(minimal(), "type", "Message Received")) == pascal);
    CHECK(parse_error(with(minimal(), "type", "1Message")) == pascal);
    CHECK(parse_error(with(minimal(), "type", "Mess\u00e9ge")) == pascal);
    CHECK(parse_error(with(minimal(), "type", "A" + std::string(128, 'a'))) == pascal);  // 129 chars
    CHECK(parse_error(with(minimal(), "type", "A" + std::string(127, 'a'))) == "");      // 128 chars
    CHECK(parse_error(with(minimal(), "type", "X")) == "");
    CHECK(parse_error(with(minimal(), "type", "AIProcessingStarted2")) == "");
}

TEST_CASE("parse_new_event checks the aggregate_id field", "[unit][events]") {
    CHECK(parse_error(without(minimal(), "aggregate_id")) == "field 'aggregate_id' is required");
    CHECK(parse_error(with(minimal(), "aggregate_id", 12)) == "field 'aggregate_id' must be a string");
    CHECK(parse_error(with(minimal(), "aggregate_id", nullptr)) == "field 'aggregate_id' must be a string");
    CHECK(parse_error(with(minimal(), "aggregate_id", "")) == "field 'aggregate_id' must not be empty");
    CHECK(parse_error(with(minimal(), "aggregate_id", std::string(257, 'a'))) ==
          "field 'aggregate_id' must be at most 256 characters long");
    CHECK(parse_error(with(minimal(), "aggregate_id", std::string(256, 'a'))) == "");
    // Length is counted in characters, not bytes: 256 two-byte characters are fine.
    std::string accents;
    for (int i = 0; i < 256; ++i) accents += "\u00e9";
    CHECK(parse_error(with(minimal(), "aggregate_id", accents)) == "");
    CHECK(parse_error(with(minimal(), "aggregate_id", accents + "a")) ==
          "field 'aggregate_id' must be at most 256 characters long");
    const std::string ctl = "field 'aggregate_id' must not contain control characters";
    CHECK(parse_error(with(minimal(), "aggregate_id", "session:a\nb")) == ctl);
    CHECK(parse_error(with(minimal(), "aggregate_id", "session:a\tb")) == ctl);
    CHECK(parse_error(with(minimal(), "aggregate_id", std::string("a\0b", 3))) == ctl);
    CHECK(parse_error(with(minimal(), "aggregate_id", "a\x7f")) == ctl);
    CHECK(parse_error(with(minimal(), "aggregate_id", "a\u0085b")) == ctl);  // C1 control (NEL)
    CHECK(parse_error(with(minimal(), "aggregate_id", "user:\u00e9l\u00e8ne \U0001F600")) == "");
}

TEST_CASE("parse_new_event checks the id field", "[unit][events]") {
    CHECK(parse_error(with(minimal(), "id", 5)) == "field 'id' must be a UUID string");
    CHECK(parse_error(with(minimal(), "id", nullptr)) == "field 'id' must be a UUID string");
    CHECK(parse_error(with(minimal(), "id", "evt_123")) == "field 'id' must be a UUID string");
    CHECK(parse_error(with(minimal(), "id", "6f9619ff8b864011b42d00cf4fc964ff")) == "field 'id' must be a UUID string");
    CHECK(parse_error(with(minimal(), "id", "00000000-0000-0000-0000-000000000000")) == "field 'id' must not be the nil UUID");
    CHECK(parse_error(with(minimal(), "id", kId)) == "");
}

TEST_CASE("parse_new_event checks data and metadata", "[unit][events]") {
    CHECK(parse_error(with(minimal(), "data", json::array())) == "field 'data' must be a JSON object");
    CHECK(parse_error(with(minimal(), "data", nullptr)) == "field 'data' must be a JSON object");
    CHECK(parse_error(with(minimal(), "data", "text")) == "field 'data' must be a JSON object");
    CHECK(parse_error(with(minimal(), "metadata", 1)) == "field 'metadata' must be a JSON object");
    CHECK(parse_error(with(minimal(), "metadata", nullptr)) == "field 'metadata' must be a JSON object");
    for (const char* key : {"source", "correlation_id", "causation_id", "user_id", "session_id"}) {
        INFO(key);
        CHECK(parse_error(with(minimal(), "metadata", json{{key, 1}})) ==
              std::string("field 'metadata.") + key + "' must be a string");
        CHECK(parse_error(with(minimal(), "metadata", json{{key, nullptr}})) ==
              std::string("field 'metadata.") + key + "' must be a string");
        CHECK(parse_error(with(minimal(), "metadata", json{{key, "x"}})) == "");
    }
    CHECK(parse_error(with(minimal(), "metadata", json{{"other", 1}})) == "");
}

TEST_CASE("NewEvent::to_json is what parse_new_event reads back", "[unit][events]") {
    NewEvent e;
    e.id = Uuid::parse(kId);
    e.type = "ToolCalled";
    e.aggregate_id = "session:web:9";
    e.data = {{"tool", "think"}};
    e.metadata = {{"source", "ai-processor"}};
    json j = e.to_json();
    CHECK(j["id"] == kId);
    auto back = parse_new_event(j);
    REQUIRE(back);
    CHECK(back->id == e.id);
    CHECK(back->type == e.type);
    CHECK(back->aggregate_id == e.aggregate_id);
    CHECK(back->data == e.data);
    CHECK(back->metadata == e.metadata);
    e.id.reset();
    CHECK_FALSE(e.to_json().contains("id"));
}

TEST_CASE("parse_append_request reads a single event with an optional expected_version", "[unit][events]") {
    auto r = parse_append_request(minimal());
    REQUIRE(r);
    CHECK_FALSE(r->batch);
    CHECK(r->aggregate_id == "session:web:1");
    CHECK_FALSE(r->expected_version);
    REQUIRE(r->events.size() == 1);

    auto v = parse_append_request(with(minimal(), "expected_version", 0));
    REQUIRE(v);
    REQUIRE(v->expected_version);
    CHECK(v->expected_version->value() == 0);

    CHECK(append_error(with(minimal(), "expected_version", -1)) == "field 'expected_version' must be a non-negative integer");
    CHECK(append_error(with(minimal(), "expected_version", "3")) == "field 'expected_version' must be a non-negative integer");
    CHECK(append_error(with(minimal(), "expected_version", 1.5)) == "field 'expected_version' must be a non-negative integer");
    CHECK(append_error(with(minimal(), "expected_version", nullptr)) ==
          "field 'expected_version' must be a non-negative integer");
    CHECK(append_error(without(minimal(), "type")) == "field 'type' is required");
    CHECK(append_error(json::array()) == "the body must be a JSON object (one event, or a batch with 'events')");
}

TEST_CASE("parse_append_request reads a batch of one aggregate", "[unit][events]") {
    json body = {{"aggregate_id", "session:web:1"},
                 {"expected_version", 4},
                 {"events",
                  {{{"type", "ToolCalled"}, {"data", {{"tool", "think"}}}},
                   {{"type", "ToolCompleted"}, {"aggregate_id", "session:web:1"}, {"id", kId}}}}};
    auto r = parse_append_request(body);
    REQUIRE(r);
    CHECK(r->batch);
    CHECK(r->aggregate_id == "session:web:1");
    REQUIRE(r->expected_version);
    CHECK(r->expected_version->value() == 4);
    REQUIRE(r->events.size() == 2);
    CHECK(r->events[0].aggregate_id == "session:web:1");  // inherited
    CHECK(r->events[0].data == json{{"tool", "think"}});
    CHECK(r->events[1].id->str() == kId);

    CHECK(append_error(without(body, "aggregate_id")) == "field 'aggregate_id' is required");
    CHECK(append_error(with(body, "aggregate_id", "")) == "field 'aggregate_id' must not be empty");
    CHECK(append_error(with(body, "events", json::object())) == "field 'events' must be an array");
    CHECK(append_error(with(body, "events", json::array())) == "field 'events' must not be empty");
    json many = json::array();
    for (std::size_t i = 0; i <= kMaxBatchEvents; ++i) many.push_back({{"type", "A"}});
    CHECK(append_error(with(body, "events", many)) == "field 'events' must hold at most 1000 events");
    many.erase(many.size() - 1);
    CHECK(append_error(with(body, "events", many)) == "");

    json other = body;
    other["events"][1]["aggregate_id"] = "session:web:2";
    CHECK(append_error(other) == "events[1]: field 'aggregate_id' must equal the batch's aggregate_id");
    json bad_type = body;
    bad_type["events"][1]["type"] = 3;
    CHECK(append_error(bad_type) == "events[1]: field 'type' must be a string");
    json not_object = body;
    not_object["events"][0] = "x";
    CHECK(append_error(not_object) == "events[0]: an event must be a JSON object");
    json dup = body;
    dup["events"][0]["id"] = kId;
    CHECK(append_error(dup) == "events[1]: field 'id' duplicates the id of events[0]");
}

TEST_CASE("Event envelope round-trips through to_json/from_json", "[unit][events]") {
    Event e;
    e.id = *Uuid::parse(kId);
    e.type = "MessageReceived";
    e.aggregate_id = "session:telegram:42";
    e.version = AggregateVersion(3);
    e.position = GlobalPosition(1234567890123);
    e.timestamp = *parse_rfc3339("2026-11-22T10:00:00.123Z");
    e.data = {{"text", "h\u00e9llo"}, {"nested", {{"a", json::array({1, 2.5, nullptr, true})}}}};
    e.metadata = {{"source", "telegram"}, {"correlation_id", kId}};

    json j = e.to_json();
    CHECK(j["id"] == kId);
    CHECK(j["type"] == "MessageReceived");
    CHECK(j["aggregate_id"] == "session:telegram:42");
    CHECK(j["aggregate_version"] == 3);
    CHECK(j["position"] == 1234567890123);
    CHECK(j["timestamp"] == "2026-11-22T10:00:00.123Z");
    CHECK(j["data"] == e.data);
    CHECK(j["metadata"] == e.metadata);
    CHECK(j.size() == 8);

    auto back = Event::from_json(json::parse(j.dump()));
    REQUIRE(back);
    CHECK(back->id == e.id);
    CHECK(back->type == e.type);
    CHECK(back->aggregate_id == e.aggregate_id);
    CHECK(back->version == e.version);
    CHECK(back->position == e.position);
    CHECK(back->timestamp == e.timestamp);
    CHECK(back->data == e.data);
    CHECK(back->metadata == e.metadata);
    CHECK(back->to_json() == j);
}

TEST_CASE("Event::from_json refuses incomplete or malformed envelopes", "[unit][events]") {
    Event e;
    e.id = *Uuid::parse(kId);
    e.type = "MessageReceived";
    e.aggregate_id = "session:web:1";
    e.version = AggregateVersion(1);
    e.position = GlobalPosition(1);
    e.timestamp = *parse_rfc3339("2026-11-22T10:00:00.000Z");
    const json good = e.to_json();
    REQUIRE(Event::from_json(good));

    auto err = [](const json& j) {
        auto r = Event::from_json(j);
        if (r) return std::string();
        CHECK(r.error().code == codes::invalid_event);
        return r.error().detail;
    };
    CHECK(err(json::array()) == "an event must be a JSON object");
    CHECK(err(without(good, "id")) == "field 'id' must be a UUID string");
    CHECK(err(with(good, "id", "x")) == "field 'id' must be a UUID string");
    CHECK(err(without(good, "type")) == "field 'type' must be a string");
    CHECK(err(with(good, "type", "lower")) == "field 'type' must be PascalCase");
    CHECK(err(without(good, "aggregate_id")) == "field 'aggregate_id' is required");
    CHECK(err(without(good, "aggregate_version")) == "field 'aggregate_version' must be a positive integer");
    CHECK(err(with(good, "aggregate_version", 0)) == "field 'aggregate_version' must be a positive integer");
    CHECK(err(with(good, "position", -5)) == "field 'position' must be a positive integer");
    CHECK(err(with(good, "position", 1.5)) == "field 'position' must be a positive integer");
    CHECK(err(with(good, "position", "7")) == "field 'position' must be a positive integer");
    CHECK(err(without(good, "timestamp")) == "field 'timestamp' must be an RFC 3339 string");
    CHECK(err(with(good, "timestamp", "2026-11-22")) == "field 'timestamp' must be an RFC 3339 string");
    CHECK(err(with(good, "data", json::array())) == "field 'data' must be a JSON object");
    CHECK(err(without(good, "metadata")) == "field 'metadata' must be a JSON object");
}

TEST_CASE("same_content compares type, aggregate, data and metadata", "[unit][events]") {
    Event stored;
    stored.id = *Uuid::parse(kId);
    stored.type = "MessageReceived";
    stored.aggregate_id = "session:web:1";
    stored.data = {{"text", "hi"}};
    stored.metadata = {{"source", "web"}};
    NewEvent n;
    n.id = stored.id;
    n.type = stored.type;
    n.aggregate_id = stored.aggregate_id;
    n.data = {{"text", "hi"}};
    n.metadata = {{"source", "web"}};
    CHECK(same_content(n, stored));
    n.data["text"] = "hello";
    CHECK_FALSE(same_content(n, stored));
    n.data["text"] = "hi";
    n.metadata["source"] = "api";
    CHECK_FALSE(same_content(n, stored));
    n.metadata["source"] = "web";
    n.aggregate_id = "session:web:2";
    CHECK_FALSE(same_content(n, stored));
}

TEST_CASE("valid_type_name and valid_aggregate_id", "[unit][events]") {
    CHECK(valid_type_name("MessageReceived"));
    CHECK_FALSE(valid_type_name("Message*"));
    CHECK_FALSE(valid_type_name(""));
    CHECK(valid_aggregate_id("user:42"));
    CHECK_FALSE(valid_aggregate_id(""));
    CHECK_FALSE(valid_aggregate_id("a\rb"));
}

TEST_CASE("parse_append_body: bounded JSON first, then the envelope rules", "[unit][events]") {
    auto deep = parse_append_body(std::string(100000, '[') + std::string(100000, ']'));
    REQUIRE_FALSE(deep.ok());
    CHECK(deep.error().code == codes::invalid_json);
    CHECK(deep.error().detail == "the body has nesting deeper than 64 levels (at byte 66)");
    auto big = parse_append_body(R"({"type":"X","aggregate_id":"a","data":{"x":1e400}})");
    REQUIRE_FALSE(big.ok());
    CHECK(big.error().code == codes::invalid_json);
    CHECK(big.error().detail == "the body has a number out of range: 1e400");
    auto bad = parse_append_body(R"({"type":"X"})");
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == codes::invalid_event);
    auto ok = parse_append_body(R"({"type":"X","aggregate_id":"a","data":{"a":1,"a":2}})");
    REQUIRE(ok.ok());
    CHECK(ok->events.at(0).data == json{{"a", 2}});  // the last of repeated keys, as jsonb keeps it
}

TEST_CASE("parsing a body it owns moves the events out of it and gives what parsing a copy gives", "[unit][events]") {
    const json body = {{"aggregate_id", "a"},
                       {"expected_version", 3},
                       {"events",
                        {{{"type", "X"}, {"data", {{"n", 1}, {"deep", {{"k", {1, 2, 3}}}}}}, {"metadata", {{"source", "s"}}}},
                         {{"type", "Y"}, {"id", Uuid::v4().str()}, {"data", {{"s", "t"}}}}}}};
    auto copied = parse_append_request(body);
    json single = body["events"][0];
    single["aggregate_id"] = "a";
    json single_owned = single;
    CHECK(parse_append_request(std::move(single_owned)).value().events.at(0).to_json() ==
          parse_new_event(single).value().to_json());
    json owned = body;
    auto moved = parse_append_request(std::move(owned));
    REQUIRE(copied.ok());
    REQUIRE(moved.ok());
    REQUIRE(moved->events.size() == 2);
    CHECK(moved->expected_version == copied->expected_version);
    for (std::size_t i = 0; i < 2; ++i) {
        CHECK(moved->events[i].to_json() == copied->events[i].to_json());
    }
    // A refused body is refused alike either way.
    json bad = body;
    bad["events"][1]["data"] = {{"t", std::string("a\0", 2)}};
    json bad_owned = bad;
    CHECK(parse_append_request(bad).error().detail == parse_append_request(std::move(bad_owned)).error().detail);
}

TEST_CASE("an event's text copy carries its envelope and text, not its DOMs", "[unit][events]") {
    Event e;
    e.id = Uuid::v4();
    e.type = "X";
    e.aggregate_id = "a";
    e.version = AggregateVersion(2);
    e.position = GlobalPosition(9);
    e.data = {{"big", std::string(1000, 'x')}};
    auto full = e.text_copy();  // no text: nothing to send it by, so a full copy
    CHECK(full.data == e.data);
    e.text = std::make_shared<const std::string>(e.to_json().dump());
    auto light = e.text_copy();
    CHECK(light.data.empty());
    CHECK(light.json_text() == e.to_json().dump());
    CHECK(light.id == e.id);
    CHECK(light.position == e.position);
    CHECK(light.version == e.version);
    CHECK(light.aggregate_id == "a");
    CHECK(light.type == "X");
}

TEST_CASE("U+0000 in data or metadata, strings or keys, is refused naming where", "[unit][events]") {
    const std::string nul("\0", 1);
    CHECK(parse_error(with(minimal(), "data", {{"t", "a" + nul}})) ==
          "field 'data' holds U+0000 at /t (PostgreSQL cannot store it)");
    CHECK(parse_error(with(minimal(), "data", {{"k" + nul, 1}})) ==
          "field 'data' holds U+0000 at /k" + nul + " (PostgreSQL cannot store it)");
    CHECK(parse_error(with(minimal(), "data", {{"a/b", {1, {{"c~", nul}}}}})).find("at /a~1b/1/c~0") != std::string::npos);
    CHECK(parse_error(with(minimal(), "metadata", {{"note", nul}})).rfind("field 'metadata' holds U+0000 at /note", 0) == 0);
    CHECK(append_error({{"aggregate_id", "session:web:1"}, {"events", {minimal(), with(minimal(), "data", {{"t", nul}})}}})
              .rfind("events[1]: field 'data' holds U+0000", 0) == 0);
    // Other control characters are fine in data (jsonb stores them).
    CHECK(parse_error(with(minimal(), "data", {{"t", "\x01\x1f"}})).empty());
}

TEST_CASE("Event::to_json_text is byte for byte to_json().dump()", "[unit][events]") {
    events::Event e;
    e.id = *Uuid::parse("0b3f8a52-9c1e-4d2a-8f6b-1a2b3c4d5e6f");
    e.type = "MessageReceived";
    e.aggregate_id = "session:web:\"quoted\" \\ and ünïcødé \xF0\x9F\x98\x80";
    e.version = AggregateVersion(42);
    e.position = GlobalPosition(1234567890123);
    e.timestamp = SysTime(std::chrono::milliseconds(1764547200123));
    e.data = nlohmann::json::parse(R"({"z":1,"a":[1,2.5,"x\n\u0001"],"nested":{"k":null,"t":true},"big":1e300,"neg":-7})");
    e.metadata = nlohmann::json::parse(R"({"source":"web","correlation_id":"c"})");
    CHECK(e.to_json_text(e.data.dump(), e.metadata.dump()) == e.to_json().dump());
    CHECK(e.json_text() == e.to_json().dump());
    e.data = nlohmann::json::object();
    e.metadata = nlohmann::json::object();
    CHECK(e.to_json_text("{}", "{}") == e.to_json().dump());
    e.text = std::make_shared<const std::string>("as given");
    CHECK(e.json_text() == "as given");
}
