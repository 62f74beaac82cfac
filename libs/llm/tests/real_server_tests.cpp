// The OpenAI-compatible provider against a server that is not ours: Python's http.server speaking the
// chat-completions shape and framing answers like uvicorn-based model servers and proxies do (header
// alone, chunked, close-delimited).
#include <catch2/catch.hpp>
#include <chrono>

#include "engram/llm/llm.h"
#include "engram/testing/testing.h"

using namespace engram;
using namespace engram::llm;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

json completion(const json& message, const std::string& finish) {
    return {{"id", "chatcmpl-py"},
            {"object", "chat.completion"},
            {"created", 1800000000},
            {"model", "py-model"},
            {"choices", {{{"index", 0}, {"message", message}, {"finish_reason", finish}}}},
            {"usage", {{"prompt_tokens", 12}, {"completion_tokens", 5}, {"total_tokens", 17}}}};
}

}  // namespace

TEST_CASE("openai provider: 200 completions from Python's http.server in every framing, and a 429 retried",
          "[integration][llm]") {
    const json tool_call = {
        {"role", "assistant"},
        {"content", nullptr},
        {"tool_calls",
         {{{"id", "call_1"}, {"type", "function"}, {"function", {{"name", "remember"}, {"arguments", R"({"text":"tea"})"}}}}}}};
    testing::PyHttpFake fake(json::array({
        {{"method", "POST"},
         {"path", "/v1/chat/completions"},
         {"json", completion({{"role", "assistant"}, {"content", "Hello " + std::string(2000, 'h')}}, "stop")},
         {"mode", "cycle"},
         {"delay_ms", 2}},
    }));
    std::vector<std::chrono::milliseconds> waits;
    OpenAIOptions o;
    o.base_url = fake.url() + "/v1";
    o.api_key = "sk-py";
    o.model = "py-model";
    o.timeout = 10000ms;
    o.sleep = [&](std::chrono::milliseconds d) { waits.push_back(d); };
    auto p = make_openai(o);
    Request r;
    r.messages = {{"system", "You are engram.", {}, ""}, {"user", "hi", {}, ""}};

    int failures = 0;
    for (int i = 0; i < 200; ++i) {
        auto c = p->complete(r);
        if (!c || c->message.content.rfind("Hello hhh", 0) != 0 || c->usage.total_tokens != 17) {
            ++failures;
            UNSCOPED_INFO("completion " << i << ": " << (c ? c->message.content.substr(0, 80) : c.error().detail));
        }
    }
    CHECK(failures == 0);
    CHECK(waits.empty());  // no retries were needed

    // A rate limit whose header arrives alone, then a tool call chunked.
    fake.push({{"method", "POST"},
               {"path", "/v1/chat/completions"},
               {"status", 429},
               {"headers", {{"Retry-After", "2"}}},
               {"json", {{"error", {{"message", "slow down"}, {"type", "rate_limit"}}}}},
               {"mode", "split"}});
    fake.push({{"method", "POST"},
               {"path", "/v1/chat/completions"},
               {"json", completion(tool_call, "tool_calls")},
               {"mode", "chunked"}});
    auto c = p->complete(r);
    REQUIRE(c.ok());
    REQUIRE(c->message.tool_calls.size() == 1);
    CHECK(c->message.tool_calls[0].name == "remember");
    CHECK(c->message.tool_calls[0].arguments == json{{"text", "tea"}});
    CHECK(waits == std::vector<std::chrono::milliseconds>{2000ms});
    auto reqs = fake.requests();
    REQUIRE(reqs.size() == 202);
    CHECK(reqs.back()["headers"]["authorization"] == "Bearer sk-py");
    CHECK(json::parse(reqs.back()["body"].get<std::string>())["model"] == "py-model");
}

TEST_CASE("openai provider: a streamed answer from Python's http.server, chunked and close-delimited", "[integration][llm]") {
    auto frame = [](const json& delta, const json& finish = nullptr) {
        return "data: " +
               json{{"id", "chatcmpl-py"},
                    {"object", "chat.completion.chunk"},
                    {"model", "py-model"},
                    {"choices", {{{"index", 0}, {"delta", delta}, {"finish_reason", finish}}}}}
                   .dump() +
               "\r\n\r\n";
    };
    json events = json::array({
        ": OPENROUTER PROCESSING\r\n\r\n",
        frame({{"role", "assistant"}, {"content", ""}}),
        frame({{"content", "Let me "}}),
        frame({{"content", "note that."}}),
        frame({{"tool_calls",
                {{{"index", 0},
                  {"id", "call_py"},
                  {"type", "function"},
                  {"function", {{"name", "remember"}, {"arguments", ""}}}}}}}),
        frame({{"tool_calls", {{{"index", 0}, {"function", {{"arguments", "{\"text\": \"gr"}}}}}}}),
        frame({{"tool_calls", {{{"index", 0}, {"function", {{"arguments", "een tea\"}"}}}}}}}),
        frame(json::object(), "tool_calls"),
        "data: " +
            json{{"id", "chatcmpl-py"},
                 {"choices", json::array()},
                 {"usage", {{"prompt_tokens", 20}, {"completion_tokens", 9}, {"total_tokens", 29}}}}
                .dump() +
            "\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    });
    std::string joined;
    for (const auto& e : events) joined += e.get<std::string>();
    testing::PyHttpFake fake(json::array({
        {{"method", "POST"}, {"path", "/v1/chat/completions"}, {"mode", "sse"}, {"events", events}, {"delay_ms", 3}},
    }));
    fake.push({{"method", "POST"},
               {"path", "/v1/chat/completions"},
               {"mode", "close"},
               {"headers", {{"Content-Type", "text/event-stream; charset=utf-8"}}},
               {"body", joined},
               {"chunks", 17},
               {"delay_ms", 3}});
    OpenAIOptions o;
    o.base_url = fake.url() + "/v1";
    o.model = "py-model";
    o.timeout = 10000ms;
    o.stream = true;
    o.sleep = [](std::chrono::milliseconds) {};
    auto p = make_openai(o);
    for (int i = 0; i < 3; ++i) {
        std::string content, args;
        Request r;
        r.messages = {{"user", "remember green tea", {}, ""}};
        r.on_delta = [&](const Delta& d) {
            if (d.kind == Delta::Kind::content) content += d.text;
            if (d.kind == Delta::Kind::tool_call) args += d.text;
        };
        auto c = p->complete(r);
        REQUIRE(c.ok());
        CHECK(c->message.content == "Let me note that.");
        REQUIRE(c->message.tool_calls.size() == 1);
        CHECK(c->message.tool_calls[0].id == "call_py");
        CHECK(c->message.tool_calls[0].arguments == json{{"text", "green tea"}});
        CHECK(c->finish_reason == "tool_calls");
        CHECK(c->usage.total_tokens == 29);
        CHECK(content == c->message.content);
        CHECK(args == R"({"text": "green tea"})");
    }
    auto reqs = fake.requests();
    REQUIRE(reqs.size() == 3);
    CHECK(json::parse(reqs[0]["body"].get<std::string>())["stream"] == true);
}
