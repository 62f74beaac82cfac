#include <catch2/catch.hpp>

#include <string>

#include "engram/core/json.h"
#include "engram/events/catalog.h"
#include "engram/events/codes.h"
#include "engram/events/schema.h"

using namespace engram;
using namespace engram::events;
using nlohmann::json;

namespace {

// "" when valid, else the violation's detail (after checking its code).
std::string violation(const json& schema, const json& value) {
    auto r = validate_schema(schema, value, "T.data");
    if (r) return "";
    CHECK(r.error().code == codes::schema_violation);
    return r.error().detail;
}

json J(const char* text) { return json::parse(text); }

}  // namespace

TEST_CASE("schema: type names each JSON type", "[unit][events]") {
    CHECK(violation(J(R"({"type":"string"})"), "x") == "");
    CHECK(violation(J(R"({"type":"string"})"), 5) == "T.data: expected string, got number");
    CHECK(violation(J(R"({"type":"object"})"), json::object()) == "");
    CHECK(violation(J(R"({"type":"object"})"), json::array()) == "T.data: expected object, got array");
    CHECK(violation(J(R"({"type":"array"})"), json::array()) == "");
    CHECK(violation(J(R"({"type":"array"})"), json::object()) == "T.data: expected array, got object");
    CHECK(violation(J(R"({"type":"boolean"})"), false) == "");
    CHECK(violation(J(R"({"type":"boolean"})"), 0) == "T.data: expected boolean, got number");
    CHECK(violation(J(R"({"type":"null"})"), nullptr) == "");
    CHECK(violation(J(R"({"type":"null"})"), "") == "T.data: expected null, got string");
    CHECK(violation(J(R"({"type":"number"})"), 1) == "");
    CHECK(violation(J(R"({"type":"number"})"), -2.5) == "");
    CHECK(violation(J(R"({"type":"number"})"), true) == "T.data: expected number, got boolean");
}

TEST_CASE("schema: integer accepts only integral numbers", "[unit][events]") {
    const json s = J(R"({"type":"integer"})");
    CHECK(violation(s, 3) == "");
    CHECK(violation(s, -3) == "");
    CHECK(violation(s, 18446744073709551615ull) == "");
    CHECK(violation(s, J("2.0")) == "");  // JSON Schema: 2.0 is an integer
    CHECK(violation(s, 2.5) == "T.data: expected integer, got number");
    CHECK(violation(s, J("1e300")) == "");
    CHECK(violation(s, "3") == "T.data: expected integer, got string");
}

TEST_CASE("schema: type may be an array of names", "[unit][events]") {
    const json s = J(R"({"type":["integer","string"]})");
    CHECK(violation(s, 1) == "");
    CHECK(violation(s, "1") == "");
    CHECK(violation(s, 1.5) == "T.data: expected integer or string, got number");
    CHECK(violation(J(R"({"type":["integer","string","null"]})"), true) ==
          "T.data: expected integer, string or null, got boolean");
}

TEST_CASE("schema: required and properties build the path", "[unit][events]") {
    const json s = J(R"({"type":"object","required":["a","b"],
                         "properties":{"a":{"type":"string"},
                                       "b":{"type":"object","required":["c"],"properties":{"c":{"type":"integer"}}}}})");
    CHECK(violation(s, J(R"({"a":"x","b":{"c":1}})")) == "");
    CHECK(violation(s, J(R"({"b":{"c":1}})")) == "T.data.a: required field is missing");
    CHECK(violation(s, J(R"({"a":"x"})")) == "T.data.b: required field is missing");
    CHECK(violation(s, J(R"({"a":1,"b":{"c":1}})")) == "T.data.a: expected string, got number");
    CHECK(violation(s, J(R"({"a":"x","b":{}})")) == "T.data.b.c: required field is missing");
    CHECK(violation(s, J(R"({"a":"x","b":{"c":"1"}})")) == "T.data.b.c: expected integer, got string");
    // Properties that are absent and not required are fine; unknown ones too (no additionalProperties).
    CHECK(violation(J(R"({"properties":{"a":{"type":"string"}}})"), J(R"({"z":1})")) == "");
    // required/properties apply to objects only.
    CHECK(violation(J(R"({"required":["a"]})"), 5) == "");
}

TEST_CASE("schema: additionalProperties as a boolean or a schema", "[unit][events]") {
    const json closed = J(R"({"type":"object","properties":{"a":{}},"additionalProperties":false})");
    CHECK(violation(closed, J(R"({"a":1})")) == "");
    CHECK(violation(closed, J(R"({"a":1,"b":2})")) == "T.data.b: unexpected field");
    CHECK(violation(J(R"({"additionalProperties":true})"), J(R"({"b":2})")) == "");
    const json typed = J(R"({"type":"object","properties":{"n":{"type":"integer"}},"additionalProperties":{"type":"string"}})");
    CHECK(violation(typed, J(R"({"n":1,"x":"y"})")) == "");
    CHECK(violation(typed, J(R"({"n":1,"x":2})")) == "T.data.x: expected string, got number");
}

TEST_CASE("schema: items, minItems, maxItems, uniqueItems", "[unit][events]") {
    const json s = J(R"({"type":"array","items":{"type":"integer"},"minItems":1,"maxItems":3})");
    CHECK(violation(s, J("[1,2,3]")) == "");
    CHECK(violation(s, J("[]")) == "T.data: must have at least 1 item");
    CHECK(violation(s, J("[1,2,3,4]")) == "T.data: must have at most 3 items, got 4");
    CHECK(violation(s, J(R"([1,"2"])")) == "T.data[1]: expected integer, got string");
    CHECK(violation(J(R"({"minItems":2})"), J("[1]")) == "T.data: must have at least 2 items");
    const json nested = J(R"({"type":"array","items":{"type":"object","required":["id"]}})");
    CHECK(violation(nested, J(R"([{"id":1},{}])")) == "T.data[1].id: required field is missing");
    const json unique = J(R"({"type":"array","uniqueItems":true})");
    CHECK(violation(unique, J(R"(["a","b",{"x":1}])")) == "");
    CHECK(violation(unique, J(R"(["a","b","c","b","a"])")) == "T.data: items must be unique ([0] and [4] are equal)");
    CHECK(violation(unique, J(R"([{"x":1},2,{"x":1}])")) == "T.data: items must be unique ([0] and [2] are equal)");
    CHECK(violation(unique, J("[1, 1.0]")) == "T.data: items must be unique ([0] and [1] are equal)");
    CHECK(violation(J(R"({"items":false})"), J("[]")) == "");
    CHECK(violation(J(R"({"items":false})"), J("[1]")) == "T.data[0]: not allowed");
}

TEST_CASE("schema: enum and const", "[unit][events]") {
    const json e = J(R"({"enum":["telegram","web",1,null]})");
    CHECK(violation(e, "web") == "");
    CHECK(violation(e, 1) == "");
    CHECK(violation(e, J("1.0")) == "");
    CHECK(violation(e, nullptr) == "");
    CHECK(violation(e, "sms") == R"(T.data: must be one of "telegram", "web", 1, null; got "sms")");
    CHECK(violation(J(R"({"const":"v1"})"), "v1") == "");
    CHECK(violation(J(R"({"const":"v1"})"), "v2") == R"(T.data: must be "v1", got "v2")");
    CHECK(violation(J(R"({"const":{"a":[1]}})"), J(R"({"a":[1]})")) == "");
}

TEST_CASE("schema: minLength and maxLength count characters", "[unit][events]") {
    const json s = J(R"({"type":"string","minLength":2,"maxLength":3})");
    CHECK(violation(s, "ab") == "");
    CHECK(violation(s, "\u00e9\u00e9\u00e9") == "");  // 3 characters, 6 bytes
    CHECK(violation(s, "a") == "T.data: must be at least 2 characters long");
    CHECK(violation(s, "abcd") == "T.data: must be at most 3 characters long, got 4");
    CHECK(violation(J(R"({"minLength":1})"), "") == "T.data: must be at least 1 character long");
    CHECK(violation(J(R"({"minLength":1})"), 5) == "");  // applies to strings only
}

TEST_CASE("schema: minimum, maximum and their exclusive forms", "[unit][events]") {
    const json s = J(R"({"type":"number","minimum":0,"maximum":1})");
    CHECK(violation(s, 0) == "");
    CHECK(violation(s, 1) == "");
    CHECK(violation(s, 0.5) == "");
    CHECK(violation(s, -1) == "T.data: must be >= 0, got -1");
    CHECK(violation(s, 1.5) == "T.data: must be <= 1, got 1.5");
    CHECK(violation(J(R"({"minimum":1})"), 18446744073709551615ull) == "");
    CHECK(violation(J(R"({"maximum":-1})"), 0u) == "T.data: must be <= -1, got 0");
    const json x = J(R"({"exclusiveMinimum":0,"exclusiveMaximum":10})");
    CHECK(violation(x, 5) == "");
    CHECK(violation(x, 0) == "T.data: must be > 0, got 0");
    CHECK(violation(x, 10) == "T.data: must be < 10, got 10");
    CHECK(violation(J(R"({"minimum":0})"), "text") == "");  // applies to numbers only
}

TEST_CASE("schema: minProperties and maxProperties", "[unit][events]") {
    const json s = J(R"({"minProperties":1,"maxProperties":2})");
    CHECK(violation(s, J(R"({"a":1})")) == "");
    CHECK(violation(s, json::object()) == "T.data: must have at least 1 field");
    CHECK(violation(s, J(R"({"a":1,"b":2,"c":3})")) == "T.data: must have at most 2 fields, got 3");
}

TEST_CASE("schema: anyOf, oneOf, allOf and not", "[unit][events]") {
    const json any = J(R"({"type":"object","anyOf":[{"required":["content"]},{"required":["url"]}]})");
    CHECK(violation(any, J(R"({"content":"x"})")) == "");
    CHECK(violation(any, J(R"({"url":"x","content":"y"})")) == "");
    CHECK(violation(any, json::object()) ==
          "T.data: matches none of the anyOf alternatives (T.data.content: required field is missing; "
          "T.data.url: required field is missing)");
    const json one = J(R"({"oneOf":[{"type":"integer"},{"type":"number","minimum":10}]})");
    CHECK(violation(one, 3) == "");
    CHECK(violation(one, 10.5) == "");
    CHECK(violation(one, 12) == "T.data: matches 2 of the oneOf alternatives, expected exactly one");
    CHECK(violation(one, "x") ==
          "T.data: matches none of the oneOf alternatives (T.data: expected integer, got string; "
          "T.data: expected number, got string)");
    const json all = J(R"({"allOf":[{"type":"string"},{"minLength":2}]})");
    CHECK(violation(all, "ab") == "");
    CHECK(violation(all, "a") == "T.data: must be at least 2 characters long");
    CHECK(violation(J(R"({"not":{"type":"null"}})"), 1) == "");
    CHECK(violation(J(R"({"not":{"type":"null"}})"), nullptr) == "T.data: must not match the schema of `not`");
}

TEST_CASE("schema: format uuid, date-time, email and uri are checked", "[unit][events]") {
    const json uuid = J(R"({"type":"string","format":"uuid"})");
    CHECK(violation(uuid, "6f9619ff-8b86-4011-b42d-00cf4fc964ff") == "");
    CHECK(violation(uuid, "6F9619FF-8B86-4011-B42D-00CF4FC964FF") == "");
    CHECK(violation(uuid, "evt_123") == R"(T.data: expected a UUID, got "evt_123")");
    CHECK(violation(uuid, "6f9619ff8b864011b42d00cf4fc964ff") ==
          R"(T.data: expected a UUID, got "6f9619ff8b864011b42d00cf4fc964ff")");

    const json dt = J(R"({"format":"date-time"})");
    CHECK(violation(dt, "2026-11-22T10:00:00.123Z") == "");
    CHECK(violation(dt, "2026-11-22T12:00:00+02:00") == "");
    CHECK(violation(dt, "2026-11-22") == R"(T.data: expected an RFC 3339 date-time, got "2026-11-22")");
    CHECK(violation(dt, "2026-02-30T10:00:00Z") == R"(T.data: expected an RFC 3339 date-time, got "2026-02-30T10:00:00Z")");
    CHECK(violation(dt, 5) == "");  // format applies to strings only

    const json email = J(R"({"format":"email"})");
    CHECK(violation(email, "alice@example.org") == "");
    CHECK(violation(email, "engram@localhost") == "");
    CHECK(violation(email, "a.b+tag@sub.example.co") == "");
    CHECK(violation(email, "not an address") == R"(T.data: expected an email address, got "not an address")");
    CHECK(violation(email, "@example.org") != "");
    CHECK(violation(email, "alice@") != "");
    CHECK(violation(email, "alice@exa mple.org") != "");
    CHECK(violation(email, "alice@example..org") != "");

    const json uri = J(R"({"format":"uri"})");
    CHECK(violation(uri, "https://example.org/a?b=c#d") == "");
    CHECK(violation(uri, "mailto:alice@example.org") == "");
    CHECK(violation(uri, "urn:isbn:0451450523") == "");
    CHECK(violation(uri, "not a uri") == R"(T.data: expected a URI, got "not a uri")");
    CHECK(violation(uri, "/relative/path") != "");
    CHECK(violation(uri, "https://exa mple.org") != "");
    CHECK(violation(uri, "1http://x") != "");
}

TEST_CASE("schema: boolean schemas and annotations", "[unit][events]") {
    CHECK(violation(true, 1) == "");
    CHECK(violation(false, 1) == "T.data: not allowed");
    CHECK(violation(J(R"({"properties":{"gone":false}})"), J(R"({"gone":1})")) == "T.data.gone: not allowed");
    CHECK(violation(J(R"({"$schema":"x","title":"t","description":"d","default":1,"examples":[2],"$comment":"c"})"), 3) == "");
}

TEST_CASE("schema: the first violation is reported, required before properties", "[unit][events]") {
    const json s = J(R"({"type":"object","required":["z"],"properties":{"a":{"type":"string"}}})");
    CHECK(violation(s, J(R"({"a":1})")) == "T.data.z: required field is missing");
    CHECK(violation(s, J(R"({"a":1,"z":0})")) == "T.data.a: expected string, got number");
    // Long values are shortened in messages.
    std::string long_value(200, 'x');
    auto d = violation(J(R"({"enum":["a"]})"), long_value);
    CHECK(d.size() < 120);
    CHECK(d.find("...") != std::string::npos);
}

TEST_CASE("check_schema accepts the subset and names what it refuses", "[unit][events]") {
    auto refuse = [](const char* text) {
        auto r = check_schema(J(text));
        if (r) return std::string();
        CHECK(r.error().code == codes::invalid_schema);
        return r.error().detail;
    };
    CHECK(refuse(R"({"type":"object","required":["a"],"properties":{"a":{"type":["integer","string"],"minimum":0}},
                    "additionalProperties":true,"anyOf":[{"required":["a"]}],"description":"x"})") == "");
    CHECK(refuse("true") == "");
    CHECK(refuse("3") == "#: a schema must be an object or a boolean");
    CHECK(refuse(R"({"type":"text"})") == R"(#/type: unknown type "text")");
    CHECK(refuse(R"({"type":[]})") == "#/type: must be a type name or a non-empty array of them");
    CHECK(refuse(R"({"properties":{"a":{"pattern":"^x$"}}})") == "#/properties/a/pattern: unsupported keyword 'pattern'");
    CHECK(refuse(R"({"$ref":"#/x"})") == "#/$ref: unsupported keyword '$ref'");
    CHECK(refuse(R"({"format":"ipv4"})") == "#/format: unsupported format (supported: uuid, date-time, email, uri)");
    CHECK(refuse(R"({"minLength":-1})") == "#/minLength: must be a non-negative integer");
    CHECK(refuse(R"({"maximum":"1"})") == "#/maximum: must be a number");
    CHECK(refuse(R"({"required":"a"})") == "#/required: must be an array of strings");
    CHECK(refuse(R"({"enum":[]})") == "#/enum: must be a non-empty array");
    CHECK(refuse(R"({"anyOf":{}})") == "#/anyOf: must be a non-empty array of schemas");
    CHECK(refuse(R"({"items":{"type":"nope"}})") == R"(#/items/type: unknown type "nope")");
    CHECK(refuse(R"({"additionalProperties":5})") == "#/additionalProperties: a schema must be an object or a boolean");
}

TEST_CASE("schema: every catalog schema answers on data at the depth limit and on odd numbers", "[unit][events]") {
    const auto& catalog = Catalog::builtin();
    json deep = json::object();
    for (int i = 1; i < kMaxJsonDepth; ++i) deep = json{{"text", std::move(deep)}, {"attachments", {deep}}};
    json odd = {{"text", "x"},      {"update_id", 1e19},   {"chat_id", -0},     {"message_id", 18446744073709551615ULL},
                {"size", -1e308},   {"attachments", {{}}}, {"user_id", json()}, {"session_id", std::string(1000, 'x')},
                {"iteration", 1.5}, {"results", {1, "a"}}, {"from", {1, 2, 3}}, {"sent_at", "2026-02-30T10:00:00Z"}};
    for (const auto& entry : catalog.entries()) {
        INFO(entry.type);
        for (const json* data : {&deep, &odd}) {
            auto s = catalog.validate(entry.type, *data);
            if (!s) {
                CHECK(s.error().code == "schema_violation");
                CHECK(s.error().detail.rfind(entry.type + ".data", 0) == 0);
            }
        }
    }
    // A schema as deep as a document may be, validating itself.
    json schema = true;
    for (int i = 0; i < kMaxJsonDepth / 2; ++i) schema = json{{"items", std::move(schema)}, {"type", "array"}};
    CHECK(validate_schema(schema, schema, "x").error().detail.rfind("x: expected array, got object", 0) == 0);
}
