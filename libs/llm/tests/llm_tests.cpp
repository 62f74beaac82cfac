// engram::llm against the fake OpenAI-compatible server (tests/fakes) and the offline provider.
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <vector>

#include "engram/http/client.h"
#include "engram/llm/llm.h"
#include "fake_openai.h"

using namespace engram;
using namespace engram::llm;
using engram::fakes::FakeOpenAI;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Sleeps {
    std::vector<std::chrono::milliseconds> waits;
    std::function<void(std::chrono::milliseconds)> fn() {
        return [this](std::chrono::milliseconds d) { waits.push_back(d); };
    }
};

OpenAIOptions opts(const FakeOpenAI& fake, Sleeps& s) {
    OpenAIOptions o;
    o.base_url = fake.base_url();
    o.api_key = "sk-test";
    o.model = "test-model";
    o.timeout = 5000ms;
    o.max_retries = 2;
    o.backoff = 100ms;
    o.sleep = s.fn();
    return o;
}

std::vector<ToolSpec> tools() {
    json obj = {{"type", "object"}, {"properties", {{"text", {{"type", "string"}}}}}, {"required", {"text"}}};
    return {{"send_message", "Send a message to the user", obj}, {"remember", "Store a memory", obj}};
}

Request simple(const std::string& text) {
    Request r;
    r.messages = {{"system", "You are engram.", {}, ""}, {"user", text, {}, ""}};
    r.tools = tools();
    return r;
}

}  // namespace

TEST_CASE("request format: model, tools, tool messages by tool_call_id, bearer auth", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto p = make_openai(opts(fake, s));
    fake.push_text("done");

    Request r = simple("remember I like tea");
    Message assistant{"assistant", "", {}, ""};
    assistant.tool_calls.push_back({"call_1", "remember", json{{"text", "I like tea"}}, ""});
    assistant.tool_calls.push_back({"call_2", "send_message", json{{"text", "ok"}}, R"({"text":"ok"})"});
    r.messages.push_back(assistant);
    r.messages.push_back({"tool", "stored", {}, "call_1"});
    r.messages.push_back({"tool", "sent", {}, "call_2"});
    r.max_tokens = 256;

    auto c = p->complete(r);
    REQUIRE(c.ok());
    CHECK(c->message.content == "done");
    REQUIRE(fake.request_count() == 1);
    json req = fake.requests()[0];
    CHECK(req["model"] == "test-model");
    CHECK(req["max_tokens"] == 256);
    CHECK(req["temperature"].get<double>() == Approx(0.2));
    REQUIRE(req["tools"].size() == 2);
    CHECK(req["tools"][0]["type"] == "function");
    CHECK(req["tools"][0]["function"]["name"] == "send_message");
    CHECK(req["tools"][0]["function"]["description"] == "Send a message to the user");
    CHECK(req["tools"][0]["function"]["parameters"]["required"][0] == "text");
    const json& m = req["messages"];
    REQUIRE(m.size() == 5);
    CHECK(m[0]["role"] == "system");
    CHECK(m[1]["content"] == "remember I like tea");
    CHECK(m[2]["role"] == "assistant");
    CHECK(m[2]["content"].is_null());
    REQUIRE(m[2]["tool_calls"].size() == 2);
    CHECK(m[2]["tool_calls"][0]["id"] == "call_1");
    CHECK(m[2]["tool_calls"][0]["type"] == "function");
    CHECK(m[2]["tool_calls"][0]["function"]["name"] == "remember");
    CHECK(json::parse(m[2]["tool_calls"][0]["function"]["arguments"].get<std::string>()) == json{{"text", "I like tea"}});
    CHECK(m[2]["tool_calls"][1]["function"]["arguments"] == R"({"text":"ok"})");
    CHECK(m[3] == json{{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "stored"}});
    CHECK(m[4] == json{{"role", "tool"}, {"tool_call_id", "call_2"}, {"content", "sent"}});
    CHECK(fake.request_headers()[0].at("authorization") == "Bearer sk-test");
    CHECK(s.waits.empty());

    // to_openai on its own: no tools -> no tools/tool_choice keys, no max_tokens.
    json plain = to_openai(Request{{{"user", "hi", {}, ""}}, {}, 0.7, 0}, "m");
    CHECK_FALSE(plain.contains("tools"));
    CHECK_FALSE(plain.contains("max_tokens"));
    CHECK(plain["messages"][0] == json{{"role", "user"}, {"content", "hi"}});
}

TEST_CASE("response parsing: content, tool calls with JSON arguments, usage", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto p = make_openai(opts(fake, s));
    fake.push_tool_calls({{"call_a", "remember", json{{"text", "tea"}}}, {"call_b", "think", json{{"thought", "hm"}}}});
    fake.push_text("Hello there");

    auto c = p->complete(simple("x"));
    REQUIRE(c.ok());
    CHECK(c->finish_reason == "tool_calls");
    CHECK(c->message.role == "assistant");
    REQUIRE(c->message.tool_calls.size() == 2);
    CHECK(c->message.tool_calls[0].id == "call_a");
    CHECK(c->message.tool_calls[0].name == "remember");
    CHECK(c->message.tool_calls[0].arguments == json{{"text", "tea"}});
    CHECK(json::parse(c->message.tool_calls[0].raw_arguments) == json{{"text", "tea"}});
    CHECK(c->message.tool_calls[1].arguments["thought"] == "hm");
    CHECK(c->usage.prompt_tokens == 12);
    CHECK(c->usage.completion_tokens == 5);
    CHECK(c->usage.total_tokens == 17);
    CHECK(c->model == "test-model");
    CHECK(c->raw.contains("choices"));

    auto t = p->complete(simple("y"));
    REQUIRE(t.ok());
    CHECK(t->message.content == "Hello there");
    CHECK(t->message.tool_calls.empty());
    CHECK(t->finish_reason == "stop");

    // from_openai directly: shape errors and lenient variants.
    CHECK(from_openai(json::array()).error().code == "llm_bad_response");
    CHECK(from_openai(json{{"choices", json::array()}}).error().code == "llm_bad_response");
    auto lenient = from_openai(json{
        {"choices",
         {{{"message", {{"content", nullptr}, {"tool_calls", {{{"function", {{"name", "task_complete"}, {"arguments", ""}}}}}}}},
           {"finish_reason", "stop"}}}}});
    REQUIRE(lenient.ok());
    CHECK(lenient->message.tool_calls[0].id == "call_0");
    CHECK(lenient->message.tool_calls[0].arguments == json::object());
    CHECK(lenient->finish_reason == "tool_calls");
}

TEST_CASE("429 with Retry-After is honoured, then success", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto p = make_openai(opts(fake, s));
    fake.push_status(429, {{"error", {{"message", "slow down"}, {"type", "rate_limit"}}}}, {{"Retry-After", "3"}});
    fake.push_text("ok");
    auto c = p->complete(simple("x"));
    REQUIRE(c.ok());
    CHECK(c->message.content == "ok");
    CHECK(fake.request_count() == 2);
    REQUIRE(s.waits.size() == 1);
    CHECK(s.waits[0] == 3000ms);
}

TEST_CASE("500 is retried with back-off, then success", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto p = make_openai(opts(fake, s));
    fake.push_status(500);
    fake.push_status(502);
    fake.push_text("ok");
    auto c = p->complete(simple("x"));
    REQUIRE(c.ok());
    CHECK(fake.request_count() == 3);
    REQUIRE(s.waits.size() == 2);
    CHECK(s.waits[0] == 100ms);
    CHECK(s.waits[1] == 200ms);  // doubles
}

TEST_CASE("retries exhausted: llm_unreachable for 5xx/connect, llm_rate_limited for 429", "[integration][llm]") {
    Sleeps s;
    SECTION("5xx") {
        FakeOpenAI fake;
        auto p = make_openai(opts(fake, s));
        for (int i = 0; i < 3; ++i) fake.push_status(503);
        auto c = p->complete(simple("x"));
        REQUIRE_FALSE(c.ok());
        CHECK(c.error().code == "llm_unreachable");
        CHECK(fake.request_count() == 3);
        CHECK(s.waits.size() == 2);
    }
    SECTION("429") {
        FakeOpenAI fake;
        auto p = make_openai(opts(fake, s));
        for (int i = 0; i < 3; ++i) fake.push_status(429);
        auto c = p->complete(simple("x"));
        REQUIRE_FALSE(c.ok());
        CHECK(c.error().code == "llm_rate_limited");
        CHECK(fake.request_count() == 3);
    }
    SECTION("nothing listening") {
        int port = 0;
        {
            FakeOpenAI gone;
            port = gone.port();
        }
        OpenAIOptions o;
        o.base_url = "http://127.0.0.1:" + std::to_string(port) + "/v1";
        o.max_retries = 1;
        o.timeout = 2000ms;
        o.sleep = s.fn();
        auto c = make_openai(o)->complete(simple("x"));
        REQUIRE_FALSE(c.ok());
        CHECK(c.error().code == "llm_unreachable");
        CHECK(s.waits.size() == 1);
    }
}

TEST_CASE("400 is llm_error with the API's message and is not retried", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto p = make_openai(opts(fake, s));
    fake.push_status(400, {{"error", {{"message", "Invalid schema for function 'x'"}, {"type", "invalid_request_error"}}}});
    fake.push_text("never");
    auto c = p->complete(simple("x"));
    REQUIRE_FALSE(c.ok());
    CHECK(c.error().code == "llm_error");
    CHECK_THAT(c.error().detail, Catch::Contains("Invalid schema for function 'x'"));
    CHECK(fake.request_count() == 1);
    CHECK(s.waits.empty());

    fake.push_status(401, {{"error", "bad key"}});
    auto d = p->complete(simple("x"));  // consumes "never" first
    CHECK(d.ok());
    auto e = p->complete(simple("x"));
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().code == "llm_error");
    CHECK_THAT(e.error().detail, Catch::Contains("bad key"));
}

TEST_CASE("context_length_exceeded is context_too_long", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto p = make_openai(opts(fake, s));
    fake.push_status(400, {{"error",
                            {{"message", "This model's maximum context length is 8192 tokens."},
                             {"type", "invalid_request_error"},
                             {"code", "context_length_exceeded"}}}});
    fake.push_status(400, {{"error", "the prompt exceeds the context window of this model"}});
    auto c = p->complete(simple("x"));
    REQUIRE_FALSE(c.ok());
    CHECK(c.error().code == "context_too_long");
    auto d = p->complete(simple("x"));
    REQUIRE_FALSE(d.ok());
    CHECK(d.error().code == "context_too_long");
    CHECK(fake.request_count() == 2);
}

TEST_CASE("malformed tool arguments are invalid_tool_call naming the tool", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto p = make_openai(opts(fake, s));
    fake.push_raw_tool_call("call_x", "remember", R"({"text": "unterminated)");
    fake.push_raw_tool_call("call_y", "recall", R"(["not", "an", "object"])");
    auto c = p->complete(simple("x"));
    REQUIRE_FALSE(c.ok());
    CHECK(c.error().code == "invalid_tool_call");
    CHECK_THAT(c.error().detail, Catch::Contains("remember") && Catch::Contains("not valid JSON"));
    CHECK(c.error().extra["tool"] == "remember");
    CHECK(c.error().extra["tool_call_id"] == "call_x");
    auto d = p->complete(simple("x"));
    REQUIRE_FALSE(d.ok());
    CHECK(d.error().code == "invalid_tool_call");
    CHECK_THAT(d.error().detail, Catch::Contains("recall") && Catch::Contains("not a JSON object"));
    CHECK(fake.request_count() == 2);  // not retried

    // A completion whose content has the wrong type.
    auto bad = from_openai(json{{"choices", {{{"message", {{"content", 42}}}}}}});
    CHECK(bad.error().code == "llm_bad_response");
}

TEST_CASE("a timeout is retried", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto o = opts(fake, s);
    o.timeout = 300ms;
    auto p = make_openai(o);
    fake.push_delay(1500ms);
    fake.push_text("too late");
    fake.push_text("in time");
    auto c = p->complete(simple("x"));
    REQUIRE(c.ok());
    CHECK(c->message.content == "in time");
    CHECK(fake.request_count() == 2);
    CHECK(s.waits.size() == 1);

    fake.push_delay(1500ms);
    fake.push_text("late");
    fake.push_delay(1500ms);
    fake.push_text("late");
    fake.push_delay(1500ms);
    fake.push_text("late");
    auto d = p->complete(simple("x"));
    REQUIRE_FALSE(d.ok());
    CHECK(d.error().code == "llm_unreachable");
}

TEST_CASE("fake: predicate responders and embeddings", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto p = make_openai(opts(fake, s));
    fake.on([](const json& r) { return FakeOpenAI::last_user_message(r).find("slow") != std::string::npos; },
            [](const json&) { return FakeOpenAI::text_body("slow answer"); }, 50ms);
    fake.push_text("scripted");
    auto a = p->complete(simple("a slow one"));
    REQUIRE(a.ok());
    CHECK(a->message.content == "slow answer");
    auto b = p->complete(simple("fast"));
    REQUIRE(b.ok());
    CHECK(b->message.content == "scripted");
    auto c = p->complete(simple("fast"));
    REQUIRE_FALSE(c.ok());  // script exhausted -> 500, retried, then unreachable
    CHECK(c.error().code == "llm_unreachable");
    CHECK_THAT(c.error().detail, Catch::Contains("script exhausted"));

    engram::http::Client client(fake.base_url());
    auto e = client.post_json("/embeddings", {{"model", "e"}, {"input", {"I like tea", "I like tea"}}});
    REQUIRE(e.ok());
    REQUIRE(e->status == 200);
    json j = e->json();
    REQUIRE(j["data"].size() == 2);
    CHECK(j["data"][0]["embedding"].size() == 64);
    CHECK(j["data"][0]["embedding"] == j["data"][1]["embedding"]);
    CHECK(fake.embedding_requests().size() == 1);
}

namespace {

// Runs the offline provider as the agent loop would: every tool call answered by a tool message.
std::vector<ToolCall> run_offline(Provider& p, std::vector<Message>& msgs,
                                  const std::function<std::string(const ToolCall&)>& tool_result) {
    std::vector<ToolCall> seq;
    for (int i = 0; i < 10; ++i) {
        auto c = p.complete(Request{msgs, {}, 0.2, 0});
        REQUIRE(c.ok());
        if (c->message.tool_calls.empty()) break;
        REQUIRE(c->finish_reason == "tool_calls");
        msgs.push_back(c->message);
        for (auto& tc : c->message.tool_calls) {
            seq.push_back(tc);
            msgs.push_back({"tool", tool_result(tc), {}, tc.id});
        }
        if (seq.back().name == "task_complete") break;
    }
    return seq;
}

std::vector<std::string> names(const std::vector<ToolCall>& calls) {
    std::vector<std::string> n;
    for (auto& c : calls) n.push_back(c.name);
    return n;
}

}  // namespace

TEST_CASE("offline provider: remember flow", "[integration][llm]") {
    auto p = make_offline();
    CHECK(p->name() == "offline (rule-based, no model)");
    std::vector<Message> msgs = {{"system", "sys", {}, ""}, {"user", "remember I like green tea", {}, ""}};
    auto seq = run_offline(*p, msgs, [](const ToolCall&) { return std::string("ok"); });
    CHECK(names(seq) == std::vector<std::string>{"remember", "send_message", "task_complete"});
    CHECK(seq[0].arguments == json{{"text", "I like green tea"}});
    CHECK_THAT(seq[1].arguments["text"].get<std::string>(), Catch::Contains("I like green tea"));
    CHECK(seq[2].arguments.contains("summary"));
    // Deterministic and resumable: the same prefix gives the same step.
    std::vector<Message> prefix(msgs.begin(), msgs.begin() + 4);  // sys, user, remember call, its result
    auto again = p->complete(Request{prefix, {}, 0.2, 0});
    REQUIRE(again.ok());
    CHECK(again->message.tool_calls[0].name == "send_message");
    CHECK(again->message.tool_calls[0].id == seq[1].id);
    CHECK(again->message.tool_calls[0].arguments == seq[1].arguments);
    // After task_complete: nothing more to do.
    auto end = p->complete(Request{msgs, {}, 0.2, 0});
    REQUIRE(end.ok());
    CHECK(end->message.tool_calls.empty());
    CHECK(end->finish_reason == "stop");
}

TEST_CASE("offline provider: recall flow", "[integration][llm]") {
    auto p = make_offline();
    SECTION("found") {
        std::vector<Message> msgs = {{"user", "remember I like tea", {}, ""}};
        run_offline(*p, msgs, [](const ToolCall&) { return std::string("ok"); });
        msgs.push_back({"user", "What did I say I like?", {}, ""});
        auto seq = run_offline(*p, msgs, [](const ToolCall& tc) {
            return tc.name == "recall" ? json{{"memories", {{{"text", "I like tea"}}}}}.dump() : std::string("ok");
        });
        CHECK(names(seq) == std::vector<std::string>{"recall", "send_message", "task_complete"});
        CHECK(seq[0].arguments == json{{"query", "What did I say I like?"}});
        CHECK_THAT(seq[1].arguments["text"].get<std::string>(), Catch::Contains("I like tea"));
        // ids are unique across the conversation
        CHECK(seq[0].id != msgs[1].tool_calls[0].id);
    }
    SECTION("nothing found") {
        std::vector<Message> msgs = {{"user", "what's my name?", {}, ""}};
        auto seq = run_offline(*p, msgs, [](const ToolCall&) { return std::string("[]"); });
        CHECK(names(seq) == std::vector<std::string>{"recall", "send_message", "task_complete"});
        CHECK(seq[1].arguments["text"] == "I don't know yet.");
    }
}

TEST_CASE("offline provider: anything else thinks, answers, completes", "[integration][llm]") {
    auto p = make_offline();
    std::vector<Message> msgs = {{"user", "How is the weather?", {}, ""}};
    auto seq = run_offline(*p, msgs, [](const ToolCall&) { return std::string("ok"); });
    CHECK(names(seq) == std::vector<std::string>{"think", "send_message", "task_complete"});
    CHECK(seq[0].arguments.contains("thought"));
    CHECK(seq[1].arguments["text"].is_string());
    std::vector<Message> msgs2 = {{"user", "How is the weather?", {}, ""}};
    auto seq2 = run_offline(*p, msgs2, [](const ToolCall&) { return std::string("ok"); });
    for (std::size_t i = 0; i < seq.size(); ++i) {
        CHECK(seq[i].id == seq2[i].id);
        CHECK(seq[i].arguments == seq2[i].arguments);
    }
}

namespace {

struct Pieces {
    std::string content, text_after_restart;
    std::map<int, std::string> args;
    std::map<int, std::string> names;
    int restarts = 0;
    DeltaSink sink() {
        return [this](const Delta& d) {
            if (d.kind == Delta::Kind::restart) {
                ++restarts;
                content.clear();
                args.clear();
                names.clear();
            }
            if (d.kind == Delta::Kind::content) content += d.text;
            if (d.kind == Delta::Kind::tool_call) {
                args[d.index] += d.text;
                if (!d.name.empty()) names[d.index] = d.name;
            }
        };
    }
};

}  // namespace

TEST_CASE("streaming: the same completion as without streaming, its pieces handed on as they arrive", "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto o = opts(fake, s);
    auto plain = make_openai(o);
    o.stream = true;
    auto streamed = make_openai(o);
    const std::vector<std::tuple<std::string, std::string, json>> calls = {{"call_1", "remember", {{"text", "I like tea ✓"}}},
                                                                           {"call_2", "send_message", {{"text", "noted"}}}};
    for (int round = 0; round < 2; ++round) {
        for (auto* p : {plain.get(), streamed.get()}) {
            if (round == 0)
                fake.push_text("Hello there, a longer answer written piece by piece — ünïcode too.");
            else
                fake.push_tool_calls(calls);
        }
        Pieces got;
        Request r = simple("hi");
        r.on_delta = got.sink();
        auto a = plain->complete(r);
        auto b = streamed->complete(r);
        REQUIRE(a.ok());
        REQUIRE(b.ok());
        CHECK(b->message.content == a->message.content);
        CHECK(b->finish_reason == a->finish_reason);
        CHECK(b->usage.total_tokens == a->usage.total_tokens);
        CHECK(b->usage.prompt_tokens == 12);
        CHECK(b->model == a->model);
        REQUIRE(b->message.tool_calls.size() == a->message.tool_calls.size());
        for (std::size_t i = 0; i < a->message.tool_calls.size(); ++i) {
            CHECK(b->message.tool_calls[i].id == a->message.tool_calls[i].id);
            CHECK(b->message.tool_calls[i].name == a->message.tool_calls[i].name);
            CHECK(b->message.tool_calls[i].arguments == a->message.tool_calls[i].arguments);
            CHECK(b->message.tool_calls[i].raw_arguments == a->message.tool_calls[i].raw_arguments);
            CHECK(got.args[static_cast<int>(i)] == a->message.tool_calls[i].raw_arguments);
            CHECK(got.names[static_cast<int>(i)] == a->message.tool_calls[i].name);
        }
        CHECK(got.content == a->message.content);  // the plain call hands on nothing
    }
    auto reqs = fake.requests();
    REQUIRE(reqs.size() == 4);
    CHECK_FALSE(reqs[0].contains("stream"));
    CHECK(reqs[1]["stream"] == true);
    CHECK(reqs[1]["stream_options"]["include_usage"] == true);
}

TEST_CASE("streaming: a server that answers plain JSON anyway is accepted", "[integration][llm]") {
    FakeOpenAI fake;
    fake.set_streaming(false);
    Sleeps s;
    auto o = opts(fake, s);
    o.stream = true;
    auto p = make_openai(o);
    fake.push_text("plain");
    auto c = p->complete(simple("hi"));
    REQUIRE(c.ok());
    CHECK(c->message.content == "plain");
}

TEST_CASE("streaming: a stream cut off is retried and its pieces taken back; hostile streams fail at once",
          "[integration][llm]") {
    FakeOpenAI fake;
    Sleeps s;
    auto o = opts(fake, s);
    o.stream = true;
    o.stream_max_line = 64 << 10;
    o.stream_max_tool_calls = 4;
    auto p = make_openai(o);
    auto chunk = [](const json& delta) {
        return "data: " + json{{"choices", {{{"index", 0}, {"delta", delta}, {"finish_reason", nullptr}}}}}.dump() + "\n\n";
    };

    SECTION("cut off, then whole") {
        fake.push_sse({chunk({{"content", "Hel"}}), chunk({{"content", "lo wr"}})});
        fake.push_text("Hello world");
        Pieces got;
        Request r = simple("hi");
        r.on_delta = got.sink();
        auto c = p->complete(r);
        REQUIRE(c.ok());
        CHECK(c->message.content == "Hello world");
        CHECK(got.restarts == 1);
        CHECK(got.content == "Hello world");
        CHECK(s.waits.size() == 1);
    }
    SECTION("a 10 MB line") {
        fake.push_sse({"data: {\"choices\":[{\"delta\":{\"content\":\"", std::string(10 << 20, 'x')});
        auto c = p->complete(simple("hi"));
        REQUIRE_FALSE(c.ok());
        CHECK(c.error().code == "llm_bad_response");
        CHECK_THAT(c.error().detail, Catch::Contains("a line exceeds 65536 bytes"));
        CHECK(fake.request_count() == 1);  // not retried
    }
    SECTION("a bad tool-call index") {
        fake.push_sse({chunk({{"tool_calls", {{{"index", 0}, {"id", "a"}, {"function", {{"name", "t"}}}}}}}),
                       chunk({{"tool_calls", {{{"index", 7}, {"function", {{"arguments", "{}"}}}}}}})});
        auto c = p->complete(simple("hi"));
        REQUIRE_FALSE(c.ok());
        CHECK(c.error().code == "llm_bad_response");
        CHECK_THAT(c.error().detail, Catch::Contains("tool-call index 7"));
        CHECK(c.error().extra["attempts"] == 1);
    }
    SECTION("a stream that never ends") {
        o.stream_max_duration = std::chrono::milliseconds(300);
        auto slow = make_openai(o);
        std::vector<std::string> beats(100, ": still thinking\n\n");
        fake.push_sse(beats, 20ms);
        auto started = std::chrono::steady_clock::now();
        auto c = slow->complete(simple("hi"));
        REQUIRE_FALSE(c.ok());
        CHECK(c.error().code == "llm_bad_response");
        CHECK_THAT(c.error().detail, Catch::Contains("did not end within 300 ms"));
        CHECK(std::chrono::steady_clock::now() - started < 1500ms);
    }
}
