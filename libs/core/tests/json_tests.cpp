// parse_json: the limits every outside document meets, and the helpers around it.
#include <catch2/catch.hpp>

#include "engram/core/json.h"

using namespace engram;
using nlohmann::json;

namespace {

std::string nested(char open, char close, int levels, const std::string& inner = "") {
    return std::string(static_cast<std::size_t>(levels), open) + inner + std::string(static_cast<std::size_t>(levels), close);
}

// {"a":{"a":...{}...}} with `levels` objects.
std::string nested_objects(int levels) {
    std::string s;
    for (int i = 1; i < levels; ++i) s += "{\"a\":";
    s += "{}";
    s += std::string(static_cast<std::size_t>(levels - 1), '}');
    return s;
}

std::string detail_of(std::string_view text, std::string_view what = "the body", int max_depth = kMaxJsonDepth) {
    auto r = parse_json(text, what, max_depth);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "invalid_json");
    return r.error().detail;
}

}  // namespace

TEST_CASE("parse_json reads what nlohmann reads", "[unit][core][json]") {
    for (const char* text : {R"({"a":[1,2.5,"x",true,null,{}],"b":-3})", "[]", "\"s\"", "0", " \n{ } \t", "18446744073709551615",
                             "-9223372036854775808", "1e308", "5e-324", "\"\\ud83d\\ude00\""}) {
        INFO(text);
        auto r = parse_json(text);
        REQUIRE(r.ok());
        CHECK(*r == json::parse(text));
    }
    auto big = parse_json("18446744073709551615");
    CHECK(big->is_number_unsigned());
    auto neg = parse_json("-9223372036854775808");
    CHECK(neg->is_number_integer());
    CHECK(neg->get<std::int64_t>() == INT64_MIN);
}

TEST_CASE("parse_json refuses what is not JSON, saying where", "[unit][core][json]") {
    auto d = detail_of("{\"type\": \"X\",");
    CHECK(d.rfind("the body is not valid JSON: ", 0) == 0);
    CHECK(d.find("unexpected end of input") != std::string::npos);
    CHECK(d.find("at byte 13") != std::string::npos);
    for (const char* text : {"", "{", "[1,]", "{'a':1}", "tru", "1 2", "{\"a\":1}x", "NaN", "\"\xff\"", "\"\\ud800\"",
                             "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"a\nb\"", "01"}) {
        INFO(text);
        CHECK(detail_of(text).find("is not valid JSON") != std::string::npos);
    }
    // Found by the fuzzer: nlohmann stops at a NUL byte and ignores the rest, so this was accepted.
    auto nul_end = std::string("{\"a\":1}\0{\"b\":", 13);
    CHECK_FALSE(json::parse(nul_end, nullptr, false).is_discarded());
    CHECK(detail_of(nul_end) == "the body is not valid JSON: a NUL byte (at byte 8)");
    CHECK(detail_of(std::string("\"a\0\"", 4)) == "the body is not valid JSON: a NUL byte (at byte 3)");
    // The bytes that broke the parse are not repeated: the detail is valid UTF-8 for any answer.
    CHECK(detail_of("\"\xff\xfe\"").find('\xff') == std::string::npos);
    CHECK_NOTHROW(json(detail_of("[\"\xc3\"]")).dump());
}

TEST_CASE("parse_json refuses nesting deeper than the limit and accepts the limit", "[unit][core][json]") {
    // 65 brackets: the innermost at depth 64.
    CHECK(parse_json(nested('[', ']', kMaxJsonDepth + 1)).ok());
    CHECK(json_depth(*parse_json(nested('[', ']', kMaxJsonDepth + 1))) == kMaxJsonDepth);
    auto d = detail_of(nested('[', ']', kMaxJsonDepth + 2));
    CHECK(d == "the body has nesting deeper than 64 levels (at byte 66)");
    CHECK(parse_json(nested_objects(kMaxJsonDepth + 1)).ok());
    CHECK(detail_of(nested_objects(kMaxJsonDepth + 2)).find("nesting deeper than 64 levels") != std::string::npos);

    // What broke the services: 100 000 levels (200 KB), arrays and objects, closed or not.
    for (const auto& text : {nested('[', ']', 100000), nested('[', ']', 100000).substr(0, 100000), nested_objects(100000),
                             "{\"data\":" + nested_objects(100000) + "}"}) {
        CHECK(detail_of(text).find("nesting deeper than 64 levels") != std::string::npos);
    }
    // Brackets inside strings are not nesting.
    std::string in_string = "[\"" + std::string(1000, '[') + "\"]";
    CHECK(parse_json(in_string).ok());

    // Another limit, named in the detail.
    CHECK(parse_json("{\"a\":[1]}", "the payload", 1).ok());
    CHECK(parse_json("[1]", "the payload", 0).ok());
    CHECK_FALSE(parse_json("[[1]]", "the payload", 0).ok());
    CHECK(detail_of(nested('[', ']', 4), "the payload", 2) == "the payload has nesting deeper than 2 levels (at byte 4)");
}

TEST_CASE("parse_json refuses numbers that would not survive as written", "[unit][core][json]") {
    for (const char* text : {"1e400", "-1e400", "1E+400", "[1,{\"x\":1e400}]"})
        CHECK(detail_of(text).find("has a number out of range: ") != std::string::npos);
    CHECK(detail_of(R"({"type":"X","aggregate_id":"a","data":{"x":1e400}})") == "the body has a number out of range: 1e400");
    CHECK(detail_of("1e-400").find("out of range") != std::string::npos);  // would silently become 0
    for (const char* text : {"123456789012345678901234567890", "18446744073709551616", "-9223372036854775809"})
        CHECK(detail_of(text).find("has an integer beyond 64 bits: ") != std::string::npos);
    auto long_digits = std::string(5000, '9');
    auto d = detail_of(long_digits);
    CHECK(d.size() < 120);  // the token is shown cut
    // Still fine: zeros, -0, floats of any precision, big floats written as floats.
    CHECK(parse_json("0e-400")->get<double>() == 0.0);
    CHECK(parse_json("0.0")->get<double>() == 0.0);
    auto minus_zero = parse_json("-0");
    REQUIRE(minus_zero.ok());
    CHECK(minus_zero->is_number_integer());
    CHECK(minus_zero->dump() == "0");
    CHECK(parse_json("-0.0")->dump() == "-0.0");
    CHECK(parse_json("1.2345678901234567890123e29")->is_number_float());
    CHECK(parse_json("1.0e20")->get<double>() == 1e20);
}

TEST_CASE("parse_json keeps the last of repeated keys and accepts U+0000", "[unit][core][json]") {
    auto r = parse_json(R"({"a":1,"b":{"c":[1]},"a":2,"b":3})");
    REQUIRE(r.ok());
    CHECK(*r == json{{"a", 2}, {"b", 3}});
    auto nul = parse_json(R"({"k\u0000":"v\u0000w"})");
    REQUIRE(nul.ok());
    CHECK(nul->begin().key() == std::string("k\0", 2));
}

TEST_CASE("json_depth counts containers below the top, without recursion", "[unit][core][json]") {
    CHECK(json_depth(json(1)) == 0);
    CHECK(json_depth(json::array()) == 0);
    CHECK(json_depth(json{{"a", 1}}) == 0);
    CHECK(json_depth(json{{"a", {1, 2}}}) == 1);
    CHECK(json_depth(json{{"a", {{"b", json::array()}}}, {"c", 1}}) == 2);
    // A value built in code, far deeper than any parse allows.
    json deep = json::array();
    for (int i = 0; i < 10000; ++i) deep = json::array({std::move(deep)});
    CHECK(json_depth(deep) == 10000);
}

TEST_CASE("find_nul points at the first string or key holding U+0000, replace_nul removes them", "[unit][core][json]") {
    CHECK_FALSE(find_nul(json{{"a", {"x", 1, nullptr}}}));
    CHECK(find_nul(json(std::string("a\0", 2))) == std::string(""));
    CHECK(find_nul(json{{"a", {"x", std::string("y\0", 2)}}}) == std::string("/a/1"));
    CHECK(find_nul(json{{"a/b~", {{std::string("k\0", 2), 1}}}}) == std::string("/a~1b~0/k\0", 10));
    json v = {{"t", std::string("a\0b", 3)}, {std::string("k\0", 2), {std::string("\0", 1)}}};
    replace_nul(v);
    CHECK_FALSE(find_nul(v));
    CHECK(v["t"] ==
          "a\xEF\xBF\xBD"
          "b");
    CHECK(v["k\xEF\xBF\xBD"][0] == "\xEF\xBF\xBD");
}
