// StreamAssembler: a streamed answer, cut anywhere, assembles into what the non-streamed answer
// parses to; hostile streams are refused with a model error naming the cap.
#include <catch2/catch.hpp>

#include "engram/llm/llm.h"
#include "fake_openai.h"

using namespace engram;
using namespace engram::llm;
using engram::fakes::FakeOpenAI;
using nlohmann::json;

namespace {

json with_usage(json body) {
    body["model"] = "m1";
    body["usage"] = {{"prompt_tokens", 7}, {"completion_tokens", 3}, {"total_tokens", 10}};
    return body;
}

std::string sse_of(const json& body, std::size_t piece, const std::string& eol = "\n") {
    std::string s;
    for (auto& c : FakeOpenAI::stream_chunks(body, piece, true)) s += "data: " + c + eol + eol;
    return s + "data: [DONE]" + eol + eol;
}

void same(const Completion& a, const Completion& b) {
    CHECK(a.message.role == b.message.role);
    CHECK(a.message.content == b.message.content);
    REQUIRE(a.message.tool_calls.size() == b.message.tool_calls.size());
    for (std::size_t i = 0; i < a.message.tool_calls.size(); ++i) {
        CHECK(a.message.tool_calls[i].id == b.message.tool_calls[i].id);
        CHECK(a.message.tool_calls[i].name == b.message.tool_calls[i].name);
        CHECK(a.message.tool_calls[i].arguments == b.message.tool_calls[i].arguments);
        CHECK(a.message.tool_calls[i].raw_arguments == b.message.tool_calls[i].raw_arguments);
    }
    CHECK(a.finish_reason == b.finish_reason);
    CHECK(a.usage.prompt_tokens == b.usage.prompt_tokens);
    CHECK(a.usage.completion_tokens == b.usage.completion_tokens);
    CHECK(a.usage.total_tokens == b.usage.total_tokens);
    CHECK(a.model == b.model);
}

std::string chunk(const json& delta, const json& finish = nullptr) {
    return "data: " + json{{"choices", {{{"index", 0}, {"delta", delta}, {"finish_reason", finish}}}}}.dump() + "\n\n";
}

}  // namespace

TEST_CASE("a streamed answer cut at every byte assembles to the non-streamed one", "[unit][llm]") {
    std::vector<json> bodies = {
        with_usage(FakeOpenAI::text_body("Hello, wörld — ünïcode ✓ and more text")),
        with_usage(FakeOpenAI::tool_calls_body(
            {{"call_1", "send_message", {{"text", "hi ✓"}}}, {"call_2", "remember", {{"text", "tea"}, {"n", {1, 2, 3}}}}})),
        with_usage(FakeOpenAI::text_body("")),
    };
    for (const auto& body : bodies) {
        auto expected = from_openai(body);
        REQUIRE(expected.ok());
        for (const std::string eol : {"\n", "\r\n", "\r"}) {
            std::string s = sse_of(body, 4, eol);
            for (std::size_t cut = 0; cut <= s.size(); cut += (eol == "\n" ? 1 : 7)) {
                std::string content;
                std::map<int, std::string> args, ids, names;
                StreamAssembler a({}, [&](const Delta& d) {
                    if (d.kind == Delta::Kind::content) content += d.text;
                    if (d.kind == Delta::Kind::tool_call) {
                        args[d.index] += d.text;
                        if (!d.id.empty()) ids[d.index] = d.id;
                        if (!d.name.empty()) names[d.index] = d.name;
                    }
                });
                REQUIRE(a.feed(s.substr(0, cut)).ok());
                REQUIRE(a.feed(s.substr(cut)).ok());
                CHECK(a.done());
                auto got = a.finish();
                REQUIRE(got.ok());
                same(*got, *expected);
                CHECK(content == expected->message.content);
                for (std::size_t i = 0; i < expected->message.tool_calls.size(); ++i) {
                    int k = static_cast<int>(i);
                    CHECK(args[k] == expected->message.tool_calls[i].raw_arguments);
                    CHECK(ids[k] == expected->message.tool_calls[i].id);
                    CHECK(names[k] == expected->message.tool_calls[i].name);
                }
            }
        }
    }
}

TEST_CASE("stream: tool-call fragments by index may interleave; a missing index continues the last call", "[unit][llm]") {
    StreamAssembler a;
    std::string s =
        ": keep-alive\n\n" +
        chunk({{"tool_calls", {{{"index", 1}, {"id", "b"}, {"function", {{"name", "t2"}, {"arguments", "{\"x\""}}}}}}}) +
        chunk({{"tool_calls", {{{"index", 0}, {"id", "a"}, {"function", {{"name", "t1"}, {"arguments", "{"}}}}}}}) +
        chunk({{"tool_calls", {{{"index", 1}, {"function", {{"arguments", ":1}"}}}}}}}) +
        chunk({{"tool_calls", {{{"index", 0}, {"function", {{"arguments", "}"}}}}}}}) +
        chunk({{"tool_calls", {{{"id", "c"}, {"function", {{"name", "t3"}}}}}}}) +
        chunk({{"tool_calls", {{{"function", {{"arguments", "{\"y\":2}"}}}}}}}, "stop") + "data: [DONE]\n\n";
    REQUIRE(a.feed(s).ok());
    auto c = a.finish();
    REQUIRE(c.ok());
    REQUIRE(c->message.tool_calls.size() == 3);
    CHECK(c->message.tool_calls[0].id == "a");
    CHECK(c->message.tool_calls[0].arguments == json::object());
    CHECK(c->message.tool_calls[1].name == "t2");
    CHECK(c->message.tool_calls[1].arguments == json{{"x", 1}});
    CHECK(c->message.tool_calls[2].name == "t3");
    CHECK(c->message.tool_calls[2].arguments == json{{"y", 2}});
    CHECK(c->finish_reason == "tool_calls");
}

TEST_CASE("stream: hostile streams are refused with the cap they broke", "[unit][llm]") {
    StreamLimits small{1 << 20, 64 << 10, 4};
    auto refused = [&](const std::string& s, const std::string& code, const std::string& says, StreamLimits limits = {}) {
        if (limits.max_tool_calls == 128) limits = small;
        StreamAssembler a(limits);
        auto st = a.feed(s);
        if (st) {
            auto c = a.finish();
            REQUIRE_FALSE(c.ok());
            CHECK(c.error().code == code);
            CHECK_THAT(c.error().detail, Catch::Contains(says));
            return;
        }
        CHECK(st.error().code == code);
        CHECK_THAT(st.error().detail, Catch::Contains(says));
    };
    refused("data: " + std::string(10 << 20, 'x'), "llm_bad_response", "a line exceeds 65536 bytes", {16 << 20, 64 << 10, 4});
    std::string many;
    while (many.size() < (1 << 20) + 10) many += chunk({{"content", std::string(1000, 'a')}});
    refused(many, "llm_bad_response", "exceeds 1048576 bytes");
    refused(chunk({{"tool_calls", {{{"index", 4}, {"function", {{"name", "t"}}}}}}}), "llm_bad_response",
            "tool-call index 4 is not an integer in [0, 4)");
    refused(chunk({{"tool_calls", {{{"index", -1}}}}}), "llm_bad_response", "tool-call index -1");
    refused(chunk({{"tool_calls", {{{"index", "0"}}}}}), "llm_bad_response", "tool-call index \"0\"");
    refused(chunk({{"tool_calls", {{{"index", 1.5}}}}}), "llm_bad_response", "tool-call index 1.5");
    refused("data: {not json\n\n", "llm_bad_response", "it begins: {not json");
    refused("data: [1,2]\n\n", "llm_bad_response", "not a JSON object");
    refused(chunk({{"content", 5}}), "llm_bad_response", "content is not a string");
    refused("data: {\"error\":{\"message\":\"overloaded\"}}\n\n", "llm_error", "overloaded");
    std::string ids;
    for (int i = 0; i < 5; ++i)
        ids += chunk({{"tool_calls", {{{"id", "c" + std::to_string(i)}, {"function", {{"name", "t"}}}}}}});
    refused(ids, "llm_bad_response", "more than 4 tool calls");
    // Arguments that never form an object: the same error as a non-streamed answer.
    refused(chunk({{"tool_calls", {{{"index", 0}, {"id", "a"}, {"function", {{"name", "t"}, {"arguments", "[1"}}}}}}}, "stop"),
            "invalid_tool_call", "tool call 't' (id a)");
}

TEST_CASE("stream: bytes after [DONE] are ignored; a stream without [DONE] still assembles", "[unit][llm]") {
    StreamAssembler a;
    REQUIRE(a.feed(chunk({{"content", "hi"}}, "stop") + "data: [DONE]\n\ndata: {garbage").ok());
    CHECK(a.done());
    REQUIRE(a.finish().ok());
    StreamAssembler b;
    REQUIRE(b.feed(chunk({{"content", "hi"}}) +
                   "data: " + json{{"choices", {{{"delta", {{"content", "!"}}}, {"finish_reason", "length"}}}}}.dump())
                .ok());
    CHECK_FALSE(b.done());
    REQUIRE(b.end().ok());
    CHECK(b.finished());
    auto c = b.finish();
    REQUIRE(c.ok());
    CHECK(c->message.content == "hi!");
    CHECK(c->finish_reason == "length");
}
