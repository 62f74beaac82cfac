// The AI processor binary against the real event store, PostgreSQL, nats-server and the fake
// OpenAI-compatible server.
#include "agent.h"
#include "fake_openai.h"

#include "engram/core/time.h"
#include "engram/core/timezone.h"
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/nats/nats.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

using namespace engram;
using nlohmann::json;

namespace {

struct Stack : testing::Stack {
    http::Client client{url()};
    int procs = 0;

    Stack() : testing::Stack("aiproc") {}

    // llm_url "" = the offline provider.
    std::unique_ptr<testing::Process> start_ai(const std::string& llm_url, std::map<std::string, std::string> more = {}) {
        std::map<std::string, std::string> env = {{"DATABASE_URL", db()},
                                                  {"NATS_URL", nats().url()},
                                                  {"EVENT_STORE_URL", url()},
                                                  {"LOG_LEVEL", "info"},
                                                  {"AI_PROCESSOR_LISTEN", "127.0.0.1:0"},
                                                  {"AI_PROCESSOR_LEASE_TTL_MS", "2000"},
                                                  {"LLM_MAX_RETRIES", "2"}};
        if (!llm_url.empty()) env["LLM_BASE_URL"] = llm_url;
        for (auto& [k, v] : more) env[k] = v;
        return std::make_unique<testing::Process>(
            std::vector<std::string>{testing::build_dir() + "/ai-processor/engram-ai-processor"}, env,
            dir() + "/ai-" + std::to_string(++procs) + ".log");
    }

    std::string trigger(const std::string& session, const std::string& user, const std::string& message) {
        auto id = Uuid::v4().str();
        json e = {{"id", id},
                  {"type", "TriggerReceived"},
                  {"aggregate_id", session},
                  {"data", {{"source", "api"}, {"user_id", user}, {"session_id", session}, {"message", message}}}};
        auto r = client.post_json("/events", e);
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
        return id;
    }

    // The run's events (caused by the trigger), in order.
    std::vector<json> run_events(const std::string& session, const std::string& tid) {
        std::vector<json> out;
        for (auto& e : aggregate(session))
            if (e["metadata"].value("causation_id", "") == tid) out.push_back(e);
        return out;
    }
    bool finished(const std::string& session, const std::string& tid) {
        for (auto& e : run_events(session, tid))
            if (e["type"] == "AIProcessingCompleted" || e["type"] == "AIProcessingFailed") return true;
        return false;
    }
    json last_of(const std::string& session, const std::string& tid, const std::string& type) {
        json out;
        for (auto& e : run_events(session, tid))
            if (e["type"] == type) out = e;
        return out;
    }
};

std::vector<std::string> types(const std::vector<json>& evs) {
    std::vector<std::string> t;
    for (auto& e : evs) t.push_back(e["type"].get<std::string>());
    return t;
}

int assistant_messages(const json& request) {
    int n = 0;
    for (auto& m : request["messages"])
        if (m["role"] == "assistant") ++n;
    return n;
}

void wait_finished(Stack& s, const std::string& session, const std::string& tid, testing::Process& p,
                   std::chrono::seconds t = std::chrono::seconds(30)) {
    bool done = testing::eventually([&] { return s.finished(session, tid); }, t);
    if (!done) FAIL("run not finished; processor log:\n" << testing::tail_file(p.log_path()));
}

}  // namespace

TEST_CASE("a scripted multi-step run: events written and requests sent", "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    auto first = fakes::FakeOpenAI::tool_calls_body({{"call_1", "think", {{"thought", "the user says hi"}}}});
    first["choices"][0]["message"]["content"] = "Let me think first.";
    fake.push_json(first);
    fake.push_tool_calls({{"call_2", "send_message", {{"text", "Hello there!"}}}});
    fake.push_tool_calls({{"call_3", "task_complete", {{"summary", "greeted"}}}});
    auto ai = s.start_ai(fake.base_url());

    std::string session = "session:web:one";
    auto tid = s.trigger(session, "web:u1", "hi");
    wait_finished(s, session, tid, *ai);

    auto evs = s.run_events(session, tid);
    INFO(testing::tail_file(ai->log_path()));
    CHECK(types(evs) == std::vector<std::string>{"AIProcessingStarted", "ThinkingGenerated", "ToolCalled", "ThinkingGenerated",
                                                 "ToolCompleted", "ToolCalled", "MessageGenerated", "ToolCompleted", "ToolCalled",
                                                 "ToolCompleted", "AIProcessingCompleted"});
    for (auto& e : evs) {
        CHECK(e["metadata"]["correlation_id"] == tid);
        CHECK(e["metadata"]["causation_id"] == tid);
        CHECK(e["id"] == Uuid::v5(*Uuid::parse(tid), "started").str());
        break;
    }
    auto run_id = Uuid::v5(*Uuid::parse(tid), "run").str();
    CHECK(evs[0]["data"]["run_id"] == run_id);
    CHECK(evs[0]["data"]["provider"] == "openai-compatible");
    CHECK(evs[1]["data"]["text"] == "Let me think first.");
    CHECK(evs[2]["data"]["tool"] == "think");
    CHECK(evs[2]["data"]["tool_call_id"] == "call_1");
    CHECK(evs[3]["data"]["text"] == "the user says hi");
    CHECK(evs[6]["data"]["text"] == "Hello there!");
    CHECK(evs[6]["data"]["channel"] == "web");
    CHECK(evs[6]["data"]["tool_call_id"] == "call_2");
    auto done = evs.back()["data"];
    CHECK(done["stop_reason"] == "task_complete");
    CHECK(done["iterations"] == 3);
    CHECK(done["messages_sent"] == 1);
    CHECK(done["summary"] == "greeted");
    CHECK(done["usage"]["total_tokens"] == 3 * 17);

    auto reqs = fake.requests();
    REQUIRE(reqs.size() == 3);
    std::set<std::string> tools;
    for (auto& t : reqs[0]["tools"]) tools.insert(t["function"]["name"].get<std::string>());
    CHECK(tools == std::set<std::string>{"think", "send_message", "remember", "recall", "task_complete", "schedule",
                                         "cancel_reminder", "list_reminders"});
    CHECK(reqs[0]["messages"].size() == 2);
    CHECK(reqs[0]["messages"][0]["role"] == "system");
    CHECK(reqs[0]["messages"][1] == json{{"role", "user"}, {"content", "hi"}});
    for (std::size_t i = 1; i < 3; ++i) {
        auto& m = reqs[i]["messages"];
        REQUIRE(m.size() == 2 + 2 * i);
        auto asst = m[m.size() - 2], tool = m[m.size() - 1];
        CHECK(asst["role"] == "assistant");
        CHECK(asst["tool_calls"][0]["id"] == "call_" + std::to_string(i));
        CHECK(tool["role"] == "tool");
        CHECK(tool["tool_call_id"] == "call_" + std::to_string(i));
    }
    CHECK(reqs[1]["messages"][2]["content"] == "Let me think first.");

    // A second message in the session sees the first exchange in its prompt.
    fake.push_text("Fine, thanks.");
    auto t2 = s.trigger(session, "web:u1", "how are you?");
    wait_finished(s, session, t2, *ai);
    auto end = s.last_of(session, t2, "AIProcessingCompleted");
    CHECK(end["data"]["stop_reason"] == "end_turn");
    CHECK(s.last_of(session, t2, "MessageGenerated")["data"]["text"] == "Fine, thanks.");
    auto sys = fake.requests().back()["messages"][0]["content"].get<std::string>();
    CHECK(sys.find("Hello there!") != std::string::npos);
    CHECK(sys.find("user: hi") != std::string::npos);
}

TEST_CASE("model failures are recorded with their reason", "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    auto ai = s.start_ai(fake.base_url());

    SECTION("5xx until the retries are exhausted -> llm_unreachable") {
        for (int i = 0; i < 3; ++i) fake.push_status(500);
        auto tid = s.trigger("session:web:f1", "web:u", "hello");
        wait_finished(s, "session:web:f1", tid, *ai);
        auto f = s.last_of("session:web:f1", tid, "AIProcessingFailed");
        REQUIRE(f.is_object());
        CHECK(f["data"]["reason"] == "llm_unreachable");
        CHECK(f["data"]["attempts"] == 3);
        CHECK(f["data"]["http_status"] == 500);
        CHECK(f["data"]["retryable"] == true);
        CHECK(fake.request_count() == 3);
    }
    SECTION("malformed tool arguments -> invalid_tool_call") {
        fake.push_raw_tool_call("call_x", "send_message", "{\"text\": \"unterminated");
        auto tid = s.trigger("session:web:f2", "web:u", "hello");
        wait_finished(s, "session:web:f2", tid, *ai);
        auto f = s.last_of("session:web:f2", tid, "AIProcessingFailed");
        REQUIRE(f.is_object());
        CHECK(f["data"]["reason"] == "invalid_tool_call");
        CHECK(f["data"]["detail"].get<std::string>().find("send_message") != std::string::npos);
        CHECK(s.last_of("session:web:f2", tid, "MessageGenerated").is_null());
        CHECK(fake.request_count() == 1);
    }
    SECTION("400 context_length_exceeded -> context_too_long") {
        fake.push_status(400, {{"error",
                                {{"message", "This model's maximum context length is 128000 tokens."},
                                 {"type", "invalid_request_error"},
                                 {"code", "context_length_exceeded"}}}});
        auto tid = s.trigger("session:web:f3", "web:u", "hello");
        wait_finished(s, "session:web:f3", tid, *ai);
        auto f = s.last_of("session:web:f3", tid, "AIProcessingFailed");
        REQUIRE(f.is_object());
        CHECK(f["data"]["reason"] == "context_too_long");
        CHECK(fake.request_count() == 1);
    }
    // Acked after recording the failure: no redelivery asks the model again.
    auto n = fake.request_count();
    std::this_thread::sleep_for(std::chrono::milliseconds(3000));
    CHECK(fake.request_count() == n);
}

TEST_CASE("hostile model answers: too deep is a model error recorded as such, U+0000 is stored as U+FFFD",
          "[integration][ai][json]") {
    Stack s;
    fakes::FakeOpenAI fake;
    auto ai = s.start_ai(fake.base_url());

    // An answer nested deeper than any outside document may be: llm_bad_response, recorded, not retried.
    json deep = json::object();
    for (int i = 0; i < 1000; ++i) deep = json{{"a", std::move(deep)}};
    fake.push_json({{"choices", {{{"message", {{"role", "assistant"}, {"content", deep}}}}}}});
    auto t1 = s.trigger("session:web:h1", "web:u", "hello");
    wait_finished(s, "session:web:h1", t1, *ai);
    auto f1 = s.last_of("session:web:h1", t1, "AIProcessingFailed");
    REQUIRE(f1.is_object());
    CHECK(f1["data"]["reason"] == "llm_bad_response");
    CHECK(f1["data"]["detail"].get<std::string>().find("nesting deeper than 64 levels") != std::string::npos);
    CHECK(f1["data"]["retryable"] == false);

    // Tool arguments deeper than a ToolCalled event can carry: invalid_tool_call, with the raw text.
    // (kMaxArgumentsDepth + 2 objects: the innermost one level beyond the limit.)
    std::string args;
    for (int i = 0; i < llm::kMaxArgumentsDepth + 2; ++i) args += "{\"a\":";
    args += "1" + std::string(static_cast<std::size_t>(llm::kMaxArgumentsDepth + 2), '}');
    fake.push_raw_tool_call("call_d", "send_message", args);
    auto t2 = s.trigger("session:web:h2", "web:u", "hello");
    wait_finished(s, "session:web:h2", t2, *ai);
    auto f2 = s.last_of("session:web:h2", t2, "AIProcessingFailed");
    REQUIRE(f2.is_object());
    CHECK(f2["data"]["reason"] == "invalid_tool_call");
    CHECK(f2["data"]["detail"].get<std::string>().find("nesting deeper than 60 levels") != std::string::npos);
    CHECK(f2["data"]["raw_arguments"] == args);
    CHECK(s.last_of("session:web:h2", t2, "ToolCalled").is_null());

    // U+0000 in the answer: the store cannot hold it, the user still gets the answer.
    fake.push_text(std::string("tea\0time", 8));
    auto t3 = s.trigger("session:web:h3", "web:u", "hello");
    wait_finished(s, "session:web:h3", t3, *ai);
    auto m = s.last_of("session:web:h3", t3, "MessageGenerated");
    REQUIRE(m.is_object());
    CHECK(m["data"]["text"] == "tea\xEF\xBF\xBDtime");
    CHECK(s.last_of("session:web:h3", t3, "AIProcessingCompleted").is_object());
    CHECK(fake.request_count() == 3);
}

TEST_CASE("kill -9 mid-run: the run resumes from the log", "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    std::atomic<bool> delayed{false};
    auto iter = [](int n) { return [n](const json& r) { return assistant_messages(r) == n - 1; }; };
    auto answer = [](std::vector<std::tuple<std::string, std::string, json>> calls) {
        return [calls](const json&) { return fakes::FakeOpenAI::tool_calls_body(calls); };
    };
    fake.on(iter(1), answer({{"call_1", "send_message", {{"text", "first"}}}}));
    // The 2nd model answer is slow the first time: the processor is killed while waiting for it.
    fake.on([&](const json& r) { return assistant_messages(r) == 1 && !delayed.exchange(true); },
            answer({{"call_2", "send_message", {{"text", "second"}}}}), std::chrono::milliseconds(6000));
    fake.on(iter(2), answer({{"call_2", "send_message", {{"text", "second"}}}}));
    fake.on(iter(3), answer({{"call_3", "task_complete", {{"summary", "two messages"}}}}));

    auto ai = s.start_ai(fake.base_url());
    std::string session = "session:telegram:42";
    auto tid = s.trigger(session, "telegram:42", "send me two messages");
    REQUIRE(testing::eventually([&] { return fake.request_count() >= 2; }, std::chrono::seconds(20)));
    // Iteration 1 is fully recorded before iteration 2 is asked for.
    CHECK(s.last_of(session, tid, "ToolCompleted")["data"]["tool_call_id"] == "call_1");
    CHECK(ai->kill9() == 128 + 9);
    CHECK_FALSE(s.finished(session, tid));

    auto ai2 = s.start_ai(fake.base_url());
    wait_finished(s, session, tid, *ai2, std::chrono::seconds(40));
    INFO(testing::tail_file(ai2->log_path()));

    std::map<int, int> per_iteration;
    for (auto& r : fake.requests()) per_iteration[assistant_messages(r) + 1]++;
    CHECK(per_iteration[1] == 1);  // recorded before the crash: never asked again
    CHECK(per_iteration[2] == 2);  // the answer lost in the crash is asked again
    CHECK(per_iteration[3] == 1);

    auto evs = s.run_events(session, tid);
    std::vector<std::string> texts;
    for (auto& e : evs)
        if (e["type"] == "MessageGenerated") texts.push_back(e["data"]["text"]);
    CHECK(texts == std::vector<std::string>{"first", "second"});
    auto ts = types(evs);
    CHECK(std::count(ts.begin(), ts.end(), std::string("AIProcessingStarted")) == 1);
    auto done = s.last_of(session, tid, "AIProcessingCompleted");
    CHECK(done["data"]["stop_reason"] == "task_complete");
    CHECK(done["data"]["iterations"] == 3);
    CHECK(done["data"]["messages_sent"] == 2);
    // The resumed request rebuilt iteration 1 from the log: same tool_call_id answered.
    auto last = fake.requests().back()["messages"];
    CHECK(last[2]["tool_calls"][0]["id"] == "call_1");
    CHECK(last[3]["tool_call_id"] == "call_1");
}

TEST_CASE("two sessions: a slow model answer does not hold up the other", "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    fake.on([](const json& r) { return fakes::FakeOpenAI::last_user_message(r) == "slow one"; },
            [](const json&) { return fakes::FakeOpenAI::text_body("slow answer"); }, std::chrono::milliseconds(3000));
    fake.on([](const json& r) { return fakes::FakeOpenAI::last_user_message(r) == "fast one"; },
            [](const json&) { return fakes::FakeOpenAI::text_body("fast answer"); });
    auto ai = s.start_ai(fake.base_url());
    auto slow = s.trigger("session:web:slow", "web:a", "slow one");
    REQUIRE(testing::eventually([&] { return fake.request_count() >= 1; }, std::chrono::seconds(20)));
    auto fast = s.trigger("session:web:fast", "web:b", "fast one");
    wait_finished(s, "session:web:fast", fast, *ai);
    CHECK_FALSE(s.finished("session:web:slow", slow));  // still waiting for its model
    wait_finished(s, "session:web:slow", slow, *ai);
    auto p_fast = s.last_of("session:web:fast", fast, "AIProcessingCompleted")["position"].get<std::int64_t>();
    auto p_slow = s.last_of("session:web:slow", slow, "AIProcessingCompleted")["position"].get<std::int64_t>();
    CHECK(p_fast < p_slow);
    CHECK(s.last_of("session:web:slow", slow, "MessageGenerated")["data"]["text"] == "slow answer");
}

TEST_CASE("offline provider: remember without any model server", "[integration][ai]") {
    Stack s;
    auto ai = s.start_ai("");
    std::string session = "session:web:offline";
    auto tid = s.trigger(session, "web:cat", "remember my cat is Tom");
    wait_finished(s, session, tid, *ai);
    INFO(testing::tail_file(ai->log_path()));
    auto started = s.last_of(session, tid, "AIProcessingStarted");
    CHECK(started["data"]["provider"] == "offline");
    auto done = s.last_of(session, tid, "AIProcessingCompleted");
    REQUIRE(done.is_object());
    CHECK(done["data"]["stop_reason"] == "task_complete");
    CHECK(s.last_of(session, tid, "MessageGenerated")["data"]["text"].get<std::string>().find("my cat is Tom") !=
          std::string::npos);
    auto user = s.aggregate("user:web:cat");
    REQUIRE(user.size() == 1);
    CHECK(user[0]["type"] == "MemoryStored");
    CHECK(user[0]["data"]["text"] == "my cat is Tom");
    CHECK(user[0]["data"]["user_id"] == "web:cat");
    CHECK(user[0]["metadata"]["causation_id"] == tid);
    CHECK(testing::read_file(ai->log_path()).find("using the offline provider (rule-based, no model)") != std::string::npos);
}

TEST_CASE("resume from a partial log: a recorded iteration and effect are not repeated", "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    fake.push_tool_calls({{"call_2", "task_complete", {{"summary", "said hello"}}}});
    std::string session = "session:web:partial", user = "web:p";
    // The trigger and what a crashed instance had written: started, iteration 1's answer and the
    // send_message effect (no ToolCompleted yet).
    auto tid = s.trigger(session, user, "say hello");
    auto t = *Uuid::parse(tid);
    auto run_id = Uuid::v5(t, "run").str();
    json meta = {
        {"causation_id", tid}, {"correlation_id", tid}, {"source", "ai-processor"}, {"session_id", session}, {"user_id", user}};
    auto put = [&](const std::string& step, const std::string& type, json data) {
        json e = {{"id", Uuid::v5(t, step).str()}, {"type", type}, {"aggregate_id", session}, {"data", data}, {"metadata", meta}};
        auto r = s.client.post_json("/events", e);
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
    };
    put("started", "AIProcessingStarted",
        {{"run_id", run_id},
         {"trigger_event_id", tid},
         {"trigger_type", "TriggerReceived"},
         {"model", "gpt-4.1"},
         {"provider", "openai-compatible"},
         {"max_iterations", 15},
         {"session_id", session},
         {"user_id", user}});
    put("iter:1:call:0", "ToolCalled",
        {{"tool", "send_message"},
         {"tool_call_id", "call_1"},
         {"arguments", {{"text", "hello"}}},
         {"iteration", 1},
         {"run_id", run_id},
         {"usage", {{"prompt_tokens", 10}, {"completion_tokens", 2}, {"total_tokens", 12}}}});
    put("iter:1:effect:0", "MessageGenerated",
        {{"text", "hello"},
         {"channel", "web"},
         {"user_id", user},
         {"session_id", session},
         {"run_id", run_id},
         {"iteration", 1},
         {"tool_call_id", "call_1"}});

    auto ai = s.start_ai(fake.base_url());
    wait_finished(s, session, tid, *ai);
    INFO(testing::tail_file(ai->log_path()));
    auto evs = s.run_events(session, tid);
    CHECK(types(evs) == std::vector<std::string>{"AIProcessingStarted", "ToolCalled", "MessageGenerated", "ToolCompleted",
                                                 "ToolCalled", "ToolCompleted", "AIProcessingCompleted"});
    REQUIRE(fake.request_count() == 1);  // iteration 1 came from the log
    auto m = fake.requests()[0]["messages"];
    REQUIRE(m.size() == 4);
    CHECK(m[2]["tool_calls"][0]["id"] == "call_1");
    CHECK(m[3]["tool_call_id"] == "call_1");
    CHECK(m[3]["content"] == "sent");
    auto done = evs.back()["data"];
    CHECK(done["iterations"] == 2);
    CHECK(done["messages_sent"] == 1);
    CHECK(done["usage"]["total_tokens"] == 12 + 17);
}

TEST_CASE("remember then recall across runs through the memory processor", "[integration][ai][e2e]") {
    Stack s;
    auto ai = s.start_ai("");
    testing::Process memory({testing::build_dir() + "/memory-processor/engram-memory-processor"},
                            {{"DATABASE_URL", s.db()},
                             {"NATS_URL", s.nats().url()},
                             {"EVENT_STORE_URL", s.url()},
                             {"MEMORY_PROCESSOR_LISTEN", "127.0.0.1:0"},
                             {"LOG_LEVEL", "warn"}},
                            s.dir() + "/memory.log");
    std::string session = "session:web:recall";
    auto t1 = s.trigger(session, "web:rita", "remember my favourite tea is jasmine");
    wait_finished(s, session, t1, *ai);
    // The memory is searchable once the memory processor has indexed it.
    REQUIRE(testing::eventually(
        [&] {
            auto r = s.client.get("/projections/fast_memory/user:web:rita");
            return r.ok() && r->status == 200 && r->body.find("jasmine") != std::string::npos;
        },
        std::chrono::seconds(20)));
    auto t2 = s.trigger(session, "web:rita", "what is my favourite tea?");
    wait_finished(s, session, t2, *ai);
    auto recalled = s.last_of(session, t2, "MemoryRecalled");
    REQUIRE(recalled.is_object());
    CHECK(recalled["data"].dump().find("jasmine") != std::string::npos);
    auto answer = s.last_of(session, t2, "MessageGenerated");
    INFO(answer.dump());
    CHECK(answer["data"]["text"].get<std::string>().find("jasmine") != std::string::npos);
}

TEST_CASE("a long session: the prompt holds its latest messages, read from a window before the trigger", "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    // Every earlier message is a trigger too: each of those runs ends at once.
    fake.on([](const json&) { return true; },
            [](const json&) {
                return fakes::FakeOpenAI::tool_calls_body({{"c1", "task_complete", {{"summary", "ok"}}}});
            });
    const std::string session = "session:web:long";
    // 150 earlier exchanges, appended in batches: with the runs they cause, far more events than the window.
    for (int b = 0; b < 3; ++b) {
        json batch = {{"aggregate_id", session}, {"events", json::array()}};
        for (int i = b * 50; i < (b + 1) * 50; ++i) {
            batch["events"].push_back({{"type", "MessageReceived"},
                                       {"aggregate_id", session},
                                       {"data",
                                        {{"channel", "web"},
                                         {"text", "question " + std::to_string(i)},
                                         {"user_id", "web:u"},
                                         {"session_id", session}}}});
            batch["events"].push_back({{"type", "MessageGenerated"},
                                       {"aggregate_id", session},
                                       {"data", {{"channel", "web"}, {"text", "answer " + std::to_string(i)}}}});
        }
        auto r = s.client.post_json("/events", batch);
        REQUIRE(r.ok());
        REQUIRE(r->status == 201);
    }
    // queue: each earlier message its own run (merging them would make far fewer events).
    auto ai = s.start_ai(fake.base_url(), {{"AI_DOUBLE_TEXTING", "queue"}});
    auto tid = s.trigger(session, "web:u", "what did I ask last?");
    wait_finished(s, session, tid, *ai, std::chrono::seconds(90));
    CHECK(s.aggregate(session).size() > 600);
    json mine;
    for (auto& r : fake.requests())
        if (fakes::FakeOpenAI::last_user_message(r) == "what did I ask last?") mine = r;
    REQUIRE(mine.is_object());
    auto prompt = mine.dump();
    CHECK(prompt.find("question 149") != std::string::npos);
    CHECK(prompt.find("answer 149") != std::string::npos);
    CHECK(prompt.find("question 0\\n") == std::string::npos);
}

namespace {
std::string post_message(Stack& s, const std::string& session, const std::string& text) {
    auto id = Uuid::v4().str();
    auto r = s.client.post_json("/events",
                                {{"id", id},
                                 {"type", "MessageReceived"},
                                 {"aggregate_id", session},
                                 {"data", {{"channel", "web"}, {"text", text}, {"user_id", "web:u"}, {"session_id", session}}}});
    REQUIRE(r.ok());
    REQUIRE(r->status == 201);
    return id;
}
std::vector<json> of_type(Stack& s, const std::string& session, const std::string& type) {
    std::vector<json> out;
    for (auto& e : s.aggregate(session))
        if (e["type"] == type) out.push_back(e);
    return out;
}
// The model answers each run once (echoing what it was told) and ends it.
void echo_model(fakes::FakeOpenAI& fake, std::chrono::milliseconds delay = {}) {
    fake.on([](const json& req) { return req["messages"].back()["role"] == "tool"; },
            [](const json&) {
                return fakes::FakeOpenAI::tool_calls_body({{"c2", "task_complete", {{"summary", "ok"}}}});
            });
    fake.on([](const json&) { return true; },
            [](const json& req) {
                return fakes::FakeOpenAI::tool_calls_body(
                    {{"c1", "send_message", {{"text", "Heard: " + fakes::FakeOpenAI::last_user_message(req)}}}});
            },
            delay);
}
}  // namespace

TEST_CASE("double-texting: three messages in a burst get one run that reads them all, recorded in the log", "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    echo_model(fake);
    auto ai = s.start_ai(fake.base_url(), {{"AI_DOUBLE_TEXTING_DEBOUNCE_MS", "2000"}});
    const std::string session = "session:web:burst";
    // A first exchange makes sure the processor is up before the burst.
    auto warm = post_message(s, session, "hi");
    wait_finished(s, session, warm, *ai, std::chrono::seconds(60));
    auto m1 = post_message(s, session, "so");
    auto m2 = post_message(s, session, "I was thinking");
    auto m3 = post_message(s, session, "about cats");
    wait_finished(s, session, m1, *ai);
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // room for a wrong second run to show up
    auto started = of_type(s, session, "AIProcessingStarted");
    INFO(testing::tail_file(ai->log_path()));
    REQUIRE(started.size() == 2);  // the warm-up and the burst
    CHECK(started[1]["data"]["trigger_event_id"] == m1);
    CHECK(started[1]["data"]["merged_event_ids"] == json{m2, m3});
    auto answers = of_type(s, session, "MessageGenerated");
    REQUIRE(answers.size() == 2);
    CHECK(answers[1]["data"]["text"] == "Heard: so\nI was thinking\nabout cats");
    // Processing the merged messages again (a redelivery, a restart) starts nothing either.
    ai->terminate_and_wait();
    auto again = s.start_ai(fake.base_url());
    std::this_thread::sleep_for(std::chrono::seconds(3));
    CHECK(of_type(s, session, "AIProcessingStarted").size() == 2);
}

TEST_CASE("double-texting: messages sent while a run works are answered together by the next run; queue answers each",
          "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    echo_model(fake, std::chrono::milliseconds(1500));
    auto ai = s.start_ai(fake.base_url(), {{"AI_DOUBLE_TEXTING_DEBOUNCE_MS", "200"}});
    const std::string session = "session:web:during";
    auto m1 = post_message(s, session, "first");
    REQUIRE(testing::eventually([&] { return !of_type(s, session, "AIProcessingStarted").empty(); }, std::chrono::seconds(30)));
    auto m2 = post_message(s, session, "second");  // while run 1 waits for the model
    auto m3 = post_message(s, session, "third");
    REQUIRE(testing::eventually([&] { return s.finished(session, m2); }, std::chrono::seconds(30)));
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    auto started = of_type(s, session, "AIProcessingStarted");
    INFO(testing::tail_file(ai->log_path()));
    REQUIRE(started.size() == 2);
    CHECK(started[0]["data"]["trigger_event_id"] == m1);
    CHECK_FALSE(started[0]["data"].contains("merged_event_ids"));
    CHECK(started[1]["data"]["trigger_event_id"] == m2);
    CHECK(started[1]["data"]["merged_event_ids"] == json{m3});
    auto answers = of_type(s, session, "MessageGenerated");
    REQUIRE(answers.size() == 2);
    CHECK(answers[0]["data"]["text"] == "Heard: first");
    CHECK(answers[1]["data"]["text"] == "Heard: second\nthird");
    ai->terminate_and_wait();

    // queue: a run per message, in order.
    auto q = s.start_ai(fake.base_url(), {{"AI_DOUBLE_TEXTING", "queue"}});
    const std::string qs = "session:web:queued";
    auto a = post_message(s, qs, "one");
    auto b = post_message(s, qs, "two");
    REQUIRE(testing::eventually([&] { return s.finished(qs, a) && s.finished(qs, b); }, std::chrono::seconds(30)));
    auto qa = of_type(s, qs, "MessageGenerated");
    REQUIRE(qa.size() == 2);
    CHECK(qa[0]["data"]["text"] == "Heard: one");
    CHECK(qa[1]["data"]["text"] == "Heard: two");
}

TEST_CASE("reminders: scheduled in the user's time zone, listed, cancelled, and a due one answered once",
          "[integration][ai][reminders]") {
    Stack s;
    fakes::FakeOpenAI fake;
    auto ai = s.start_ai(fake.base_url());
    testing::Process memory({testing::build_dir() + "/memory-processor/engram-memory-processor"},
                            {{"DATABASE_URL", s.db()},
                             {"NATS_URL", s.nats().url()},
                             {"EVENT_STORE_URL", s.url()},
                             {"MEMORY_PROCESSOR_LISTEN", "127.0.0.1:0"},
                             {"SCHEDULER_POLL_MS", "200"},
                             {"LOG_LEVEL", "info"}},
                            s.dir() + "/memory.log");
    const std::string session = "session:telegram:7", user = "telegram:7";
    auto berlin = *TimeZone::load("Europe/Berlin");
    auto tomorrow =
        berlin.to_local(std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()) + std::chrono::hours(24));
    LocalTime nine{tomorrow.year, tomorrow.month, tomorrow.day, 9, 0, 0};
    const std::string at_nine = nine.str().substr(0, 16);  // "YYYY-MM-DDT09:00"
    const std::string expected_due = LocalTime::from_utc_seconds(berlin.to_utc(nine).time_since_epoch().count()).str() + "Z";

    // The user tells their time zone and asks for the reminder at once: the zone stored in this run
    // counts (read from the log, not the memory processor's persisted state).
    fake.push_tool_calls(
        {{"c0",
          "remember",
          {{"text", "The user's time zone is Europe/Berlin"}, {"key", "timezone"}, {"value", "Europe/Berlin"}}}});
    fake.push_tool_calls({{"c1", "schedule", {{"text", "Call Anna"}, {"at", at_nine}}},
                          {"c2", "schedule", {{"text", "too late"}, {"at", "2020-01-01T09:00"}}},
                          {"c3", "schedule", {{"text", "where?"}, {"at", at_nine}, {"timezone", "Mars/Olympus_Mons"}}},
                          {"c4", "schedule", {{"text", "both"}, {"at", at_nine}, {"in_minutes", 5}}}});
    fake.push_tool_calls({{"c5", "list_reminders", json::object()}});
    fake.push_tool_calls({{"c6", "task_complete", {{"summary", "scheduled"}}}});
    auto t1 = s.trigger(session, user, "I live in Berlin; remind me tomorrow at 9 to call Anna");
    wait_finished(s, session, t1, *ai);
    const std::string anna = Uuid::v5(*Uuid::parse(t1), "iter:2:effect:0").str();

    auto scheduled = s.last_of(session, t1, "ReminderScheduled");
    REQUIRE(scheduled.is_object());
    CHECK(scheduled["id"] == anna);
    CHECK(scheduled["data"]["reminder_id"] == anna);
    CHECK(scheduled["data"]["due_at"] == expected_due);
    CHECK(scheduled["data"]["timezone"] == "Europe/Berlin");  // from the profile, stored a moment before
    CHECK(scheduled["data"]["local_time"].get<std::string>().substr(0, 19) == nine.str());
    CHECK(scheduled["data"]["channel"] == "telegram");
    std::map<std::string, json> results;
    for (auto& e : s.run_events(session, t1))
        if (e["type"] == "ToolCompleted") results[e["data"]["tool_call_id"].get<std::string>()] = e["data"];
    CHECK(results["c1"]["is_error"] == false);
    CHECK(results["c2"]["is_error"] == true);
    CHECK(results["c2"]["result"].get<std::string>().find("is in the past") != std::string::npos);
    CHECK(results["c3"]["result"].get<std::string>().find("unknown time zone 'Mars/Olympus_Mons'") != std::string::npos);
    CHECK(results["c4"]["result"] == "schedule needs exactly one of 'at' and 'in_minutes'");
    CHECK(results["c1"]["result"].get<std::string>().find("(Europe/Berlin)") != std::string::npos);
    REQUIRE(results["c5"]["result"].is_array());
    REQUIRE(results["c5"]["result"].size() == 1);  // the failed ones scheduled nothing
    CHECK(results["c5"]["result"][0]["reminder_id"] == anna);
    CHECK(results["c5"]["result"][0]["text"] == "Call Anna");
    // The model is told the time (the trigger's), so that it can say "tomorrow".
    CHECK(fake.requests()[0]["messages"][0]["content"].get<std::string>().find("The time now (UTC): ") != std::string::npos);

    // Cancel it (and something unknown), and ask for a reminder three seconds from now.
    fake.push_tool_calls({{"d1", "cancel_reminder", {{"reminder_id", anna}, {"reason", "called already"}}},
                          {"d2", "cancel_reminder", {{"reminder_id", "nope"}}},
                          {"d3", "schedule", {{"text", "stretch"}, {"in_minutes", 0.05}}}});
    fake.push_tool_calls({{"d4", "task_complete", {{"summary", "ok"}}}});
    std::atomic<int> reminder_calls{0};
    fake.on([](const json& req) { return fakes::FakeOpenAI::last_user_message(req).rfind("Reminder: stretch", 0) == 0; },
            [&](const json&) {
                ++reminder_calls;
                return fakes::FakeOpenAI::text_body("Time to stretch!");
            });
    auto t2 = s.trigger(session, user, "never mind Anna; remind me to stretch in a few seconds");
    wait_finished(s, session, t2, *ai);
    auto cancel = s.last_of(session, t2, "ReminderCancelled");
    REQUIRE(cancel.is_object());
    CHECK(cancel["data"]["reminder_id"] == anna);
    CHECK(cancel["data"]["reason"] == "called already");
    const std::string stretch = Uuid::v5(*Uuid::parse(t2), "iter:1:effect:2").str();

    auto answered = [&] {
        int n = 0;
        for (auto& e : s.aggregate(session))
            if (e["type"] == "MessageGenerated" && e["data"]["text"] == "Time to stretch!") ++n;
        return n;
    };
    REQUIRE(testing::eventually([&] { return answered() == 1; }, std::chrono::seconds(30)));
    std::this_thread::sleep_for(std::chrono::seconds(2));  // ten more polls: nothing fires again
    CHECK(answered() == 1);
    CHECK(reminder_calls == 1);
    int triggers = 0;
    for (auto& e : s.aggregate(session))
        if (e["type"] == "TriggerReceived" && e["data"].value("reminder_id", "") != "") {
            ++triggers;
            CHECK(e["data"]["reminder_id"] == stretch);
        }
    CHECK(triggers == 1);
    auto state = s.client.get("/projections/reminders/" + http::url_encode(session) + "?as_of=999999999999999999")->json();
    CHECK(state["state"]["pending"].empty());
    CHECK(state["state"]["finished"].size() == 2);
}

TEST_CASE("streamed answers: pieces live on NATS, the log as without streaming, a crash mid-stream resumes",
          "[integration][ai]") {
    Stack s;
    fakes::FakeOpenAI fake;
    fake.set_streaming(true, 4, std::chrono::milliseconds(25));
    auto first = fakes::FakeOpenAI::tool_calls_body({{"call_1", "send_message", {{"text", "first, streamed"}}}});
    first["choices"][0]["message"]["content"] = "Thinking out loud.";
    const std::string final_text = "And this is the final answer, written piece by piece for the browser.";
    fake.on([](const json& r) { return assistant_messages(r) == 0; }, [first](const json&) { return first; });
    fake.on([&](const json& r) { return assistant_messages(r) == 1; },
            [final_text](const json&) { return fakes::FakeOpenAI::text_body(final_text); });

    nats::ConnectOptions nco;
    nco.url = s.nats().url();
    auto nc = nats::Connection::connect(nco);
    REQUIRE(nc.ok());
    std::mutex mu;
    std::vector<json> deltas;
    auto sub = (*nc)->subscribe("engram.deltas.>", "", [&](const nats::Message& m, nats::Replier&) {
        std::lock_guard lk(mu);
        deltas.push_back(json::parse(m.data));
    });
    REQUIRE(sub.ok());
    auto count = [&](int iteration) {
        std::lock_guard lk(mu);
        return std::count_if(deltas.begin(), deltas.end(), [&](const json& d) { return d["iteration"] == iteration; });
    };

    auto ai = s.start_ai(fake.base_url());
    std::string session = "session:web:streamed";
    auto tid = s.trigger(session, "web:u1", "stream it");
    // Killed while the final answer streams in: iteration 1 is recorded, iteration 2 is not.
    REQUIRE(testing::eventually([&] { return count(2) >= 3; }, std::chrono::seconds(20)));
    CHECK(ai->kill9() == 128 + 9);
    CHECK_FALSE(s.finished(session, tid));
    auto ai2 = s.start_ai(fake.base_url());
    wait_finished(s, session, tid, *ai2);
    INFO(testing::tail_file(ai2->log_path()));

    std::map<int, int> per_iteration;
    for (auto& r : fake.requests()) {
        CHECK(r["stream"] == true);
        per_iteration[assistant_messages(r) + 1]++;
    }
    CHECK(per_iteration[1] == 1);  // recorded: never asked again
    CHECK(per_iteration[2] == 2);

    // The log holds what a non-streamed answer would have left.
    auto called = s.last_of(session, tid, "ToolCalled")["data"];
    CHECK(called["tool_call_id"] == "call_1");
    CHECK(called["arguments"] == json{{"text", "first, streamed"}});
    CHECK(called["finish_reason"] == "tool_calls");
    CHECK(called["usage"]["total_tokens"] == 17);
    CHECK(s.last_of(session, tid, "ThinkingGenerated")["data"]["text"] == "Thinking out loud.");
    CHECK(s.last_of(session, tid, "MessageGenerated")["data"]["text"] == final_text);

    // The pieces: every call's text and arguments, in order, each call ending (but the one killed).
    auto run_id = Uuid::v5(*Uuid::parse(tid), "run").str();
    std::lock_guard lk(mu);
    std::map<int, std::string> content, args;
    std::map<int, int> ends;
    for (auto& d : deltas) {
        CHECK(d["session_id"] == session);
        CHECK(d["run_id"] == run_id);
        int it = d["iteration"];
        if (d.value("restart", false)) content[it].clear();
        if (d.contains("content")) content[it] += d["content"].get<std::string>();
        if (d.contains("tool_calls"))
            for (auto& t : d["tool_calls"]) args[it] += t.value("arguments", "");
        if (d.value("end", false)) ends[it]++;
    }
    CHECK(content[1] == "Thinking out loud.");
    CHECK(args[1] == called["raw_arguments"].get<std::string>());
    CHECK(ends[1] == 1);
    CHECK(ends[2] == 1);                           // the killed attempt never ended; the resumed one did
    CHECK(content[2].size() > final_text.size());  // the killed attempt's pieces, then the whole answer
    CHECK(content[2].substr(content[2].size() - final_text.size()) == final_text);
}
