// Two runs of one trigger at once (a zombie instance and the partition's new owner), driven in-process
// against the real event store and the fake OpenAI-compatible server: the log keeps one consistent
// run and the loser stops with "fenced".
#include "agent.h"
#include "fake_openai.h"

#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <thread>

using namespace engram;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Stack : testing::Stack {
    http::Client client{url()};

    Stack() : testing::Stack("aifence") {}

    ai::Agent agent(const std::string& llm_url) {
        ai::AgentOptions o;
        o.event_store_url = url();
        o.provider_kind = "openai-compatible";
        o.model = "gpt-4.1";
        o.make_provider = [llm_url](const std::string&) {
            llm::OpenAIOptions b;
            b.base_url = llm_url;
            b.max_retries = 0;
            return llm::make_openai(b);
        };
        return ai::Agent(std::move(o));
    }

    void post(const json& e) {
        auto r = client.post_json("/events", e);
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
    }

    // Appends a TriggerReceived and returns it as stored.
    events::Event trigger(const std::string& session, const std::string& message) {
        auto id = Uuid::v4().str();
        post({{"id", id},
              {"type", "TriggerReceived"},
              {"aggregate_id", session},
              {"data", {{"source", "api"}, {"user_id", "web:u"}, {"session_id", session}, {"message", message}}}});
        for (auto& e : aggregate(session))
            if (e["id"] == id) {
                auto ev = events::Event::from_json(e);
                REQUIRE(ev.ok());
                return *ev;
            }
        FAIL("the trigger is not in the log");
        throw std::logic_error("unreachable");
    }

    std::vector<json> run_events(const std::string& session, const events::Event& t) {
        std::vector<json> out;
        for (auto& e : aggregate(session))
            if (e["metadata"].value("causation_id", "") == t.id.str()) out.push_back(e);
        return out;
    }
    std::vector<json> of_type(const std::string& session, const events::Event& t, const std::string& type) {
        std::vector<json> out;
        for (auto& e : run_events(session, t))
            if (e["type"] == type) out.push_back(e);
        return out;
    }
    bool has_step(const std::string& session, const events::Event& t, const std::string& step) {
        auto id = Uuid::v5(t.id, step).str();
        for (auto& e : aggregate(session))
            if (e["id"] == id) return true;
        return false;
    }
};

std::vector<std::string> types(const std::vector<json>& evs) {
    std::vector<std::string> t;
    for (auto& e : evs) t.push_back(e["type"].get<std::string>());
    return t;
}

// A model that answers the first request slowly (run A, the instance that will turn out to be the
// zombie) and every later one at once (run B, started after A recorded its first step).
void script_race(fakes::FakeOpenAI& fake, std::function<json()> first, std::function<json()> later) {
    auto n = std::make_shared<std::atomic<int>>(0);
    fake.on([n](const json&) { return n->fetch_add(1) == 0; }, [first](const json&) { return first(); }, 2000ms);
    fake.on([](const json&) { return true; }, [later](const json&) { return later(); });
}

}  // namespace

TEST_CASE("two runs of one trigger race: one consistent run in the log, the loser is fenced", "[integration][ai][fencing]") {
    Stack s;
    fakes::FakeOpenAI fake;
    const std::string session = "session:web:race";

    // Both answers are final texts: the same step ids (iter:1:final, completed) with other content,
    // an id_conflict for the loser. Or the loser's answer is a tool call: other step ids on a session
    // that moved under it, a version_conflict that shows the other run's events.
    bool loser_calls_a_tool = GENERATE(false, true);
    INFO("the loser's answer is " << (loser_calls_a_tool ? "a tool call" : "a final text"));
    script_race(
        fake,
        [&] {
            return loser_calls_a_tool ? fakes::FakeOpenAI::tool_calls_body({{"call_a", "send_message", {{"text", "answer one"}}}})
                                      : fakes::FakeOpenAI::text_body("answer one");
        },
        [] { return fakes::FakeOpenAI::text_body("answer two"); });

    auto t = s.trigger(session, "hello");
    auto a = s.agent(fake.base_url());
    auto b = s.agent(fake.base_url());
    auto ra = std::async(std::launch::async, [&] { return a.run(t); });
    // B starts once A recorded its first step (and A is waiting for its model).
    REQUIRE(testing::eventually([&] { return s.has_step(session, t, "started") && fake.request_count() >= 1; }, 20s));
    auto rb = b.run(t);
    auto result_a = ra.get();

    INFO("A: " << (result_a ? "ok" : result_a.error().code + " " + result_a.error().detail));
    INFO("B: " << (rb ? "ok" : rb.error().code + " " + rb.error().detail));
    CHECK(rb.ok());
    REQUIRE_FALSE(result_a.ok());
    CHECK(result_a.error().code == "fenced");
    CHECK(fake.request_count() == 2);

    auto evs = s.run_events(session, t);
    CHECK(types(evs) == std::vector<std::string>{"AIProcessingStarted", "MessageGenerated", "AIProcessingCompleted"});
    auto msgs = s.of_type(session, t, "MessageGenerated");
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0]["data"]["text"] == "answer two");
    CHECK(s.of_type(session, t, "AIProcessingCompleted").size() == 1);
    CHECK(s.of_type(session, t, "ToolCalled").empty());

    // A redelivery of the trigger (to either) finds the run finished and writes nothing.
    auto before = s.aggregate(session).size();
    CHECK(a.run(t).ok());
    CHECK(s.aggregate(session).size() == before);
    CHECK(fake.request_count() == 2);
}

TEST_CASE("a user message appended during a run is traffic, not a rival: the append is retried on the new version",
          "[integration][ai][fencing]") {
    Stack s;
    fakes::FakeOpenAI fake;
    const std::string session = "session:web:traffic";
    fake.on([](const json&) { return true; }, [](const json&) { return fakes::FakeOpenAI::text_body("the answer"); }, 1500ms);
    auto t = s.trigger(session, "hello");
    auto a = s.agent(fake.base_url());
    auto ra = std::async(std::launch::async, [&] { return a.run(t); });
    REQUIRE(testing::eventually([&] { return fake.request_count() >= 1; }, 20s));
    // The session moves while the model thinks (this event has nothing to do with the run).
    s.post({{"type", "MessageReceived"},
            {"aggregate_id", session},
            {"data", {{"channel", "web"}, {"text", "are you there?"}, {"user_id", "web:u"}, {"session_id", session}}}});
    auto r = ra.get();
    INFO((r ? "ok" : r.error().code + " " + r.error().detail));
    REQUIRE(r.ok());
    auto all = s.aggregate(session);
    REQUIRE(all.size() == 5);
    CHECK(types(all) == std::vector<std::string>{"TriggerReceived", "AIProcessingStarted", "MessageReceived", "MessageGenerated",
                                                 "AIProcessingCompleted"});
    CHECK(all[3]["data"]["text"] == "the answer");
}

TEST_CASE("a run whose lease is lost writes nothing more and asks nothing more", "[integration][ai][fencing]") {
    Stack s;
    fakes::FakeOpenAI fake;
    std::atomic<bool> owned{true};
    fake.on([](const json&) { return true; },
            [&](const json&) {
                owned = false;  // the lease goes while the model call is on its way
                return fakes::FakeOpenAI::tool_calls_body({{"call_1", "send_message", {{"text", "hi"}}}});
            });
    auto a = s.agent(fake.base_url());

    SECTION("lost before the run starts") {
        const std::string session = "session:web:lost0";
        auto t = s.trigger(session, "hello");
        auto r = a.run(t, {.owns = [] { return false; }});
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "fenced");
        CHECK(s.run_events(session, t).empty());
        CHECK(fake.request_count() == 0);
    }
    SECTION("lost while the model answers: the answer is not recorded, no tool runs") {
        const std::string session = "session:web:lost1";
        auto t = s.trigger(session, "hello");
        auto r = a.run(t, {.owns = [&] { return owned.load(); }});
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "fenced");
        CHECK(types(s.run_events(session, t)) == std::vector<std::string>{"AIProcessingStarted"});
        CHECK(fake.request_count() == 1);
    }
}

TEST_CASE("a stopping run is cut short before its model call and resumes from the log", "[integration][ai][fencing]") {
    Stack s;
    fakes::FakeOpenAI fake;
    fake.push_text("the answer");
    auto a = s.agent(fake.base_url());
    const std::string session = "session:web:stop";
    auto t = s.trigger(session, "hello");
    std::atomic<int> calls{0};
    auto r = a.run(t, {.stopping = [&] { return ++calls > 1; }});  // false at the start, then true
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "stopping");
    CHECK(fake.request_count() == 0);
    CHECK(types(s.run_events(session, t)) == std::vector<std::string>{"AIProcessingStarted"});

    REQUIRE(a.run(t).ok());
    CHECK(fake.request_count() == 1);
    CHECK(types(s.run_events(session, t)) ==
          std::vector<std::string>{"AIProcessingStarted", "MessageGenerated", "AIProcessingCompleted"});
}
