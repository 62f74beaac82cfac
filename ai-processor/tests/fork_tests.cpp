// Forks driven in-process against the real event store and the fake OpenAI-compatible server: a
// fork's run sees its origin's history up to the fork position (and nothing after), uses the fork's
// model, writes only on the fork, and a redelivery asks the model nothing.
#include "agent.h"
#include "fake_openai.h"

#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/http/url.h"
#include "engram/projections/projections.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

using namespace engram;
using nlohmann::json;

namespace {

struct Stack : testing::Stack {
    http::Client client{url()};
    std::vector<std::string> overrides;  // the model override of every provider made

    Stack() : testing::Stack("aifork") {}

    ai::Agent agent(const std::string& llm_url) {
        ai::AgentOptions o;
        o.event_store_url = url();
        o.provider_kind = "openai-compatible";
        o.model = "gpt-4.1";
        o.double_texting = "queue";
        o.make_provider = [this, llm_url](const std::string& model_override) {
            overrides.push_back(model_override);
            llm::OpenAIOptions b;
            b.base_url = llm_url;
            b.max_retries = 0;
            if (!model_override.empty()) b.model = model_override;
            return llm::make_openai(b);
        };
        return ai::Agent(std::move(o));
    }

    events::Event stored(const std::string& session, const std::string& id) {
        for (auto& e : aggregate(session))
            if (e["id"] == id) {
                auto ev = events::Event::from_json(e);
                REQUIRE(ev.ok());
                return *ev;
            }
        FAIL("event " << id << " is not in " << session);
        throw std::logic_error("unreachable");
    }

    events::Event post(json e) {
        if (!e.contains("id")) e["id"] = Uuid::v4().str();
        auto r = client.post_json("/events", e);
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
        return stored(e["aggregate_id"], e["id"]);
    }

    events::Event message(const std::string& session, const std::string& text) {
        return post({{"type", "MessageReceived"},
                     {"aggregate_id", session},
                     {"data", {{"channel", "telegram"}, {"text", text}, {"user_id", "telegram:42"}, {"session_id", session}}}});
    }

    projections::SessionReader reader() {
        return projections::store_session_reader([this](const std::string& s, std::int64_t from, int limit) -> Result<json> {
            auto r = client.get("/aggregates/" + http::url_encode(s) + "/events?from_version=" + std::to_string(from) +
                                "&limit=" + std::to_string(limit));
            if (!r) return r.error();
            return r->json();
        });
    }

    events::Event fork(const projections::ForkRequest& req) {
        auto e = projections::fork_event(req, reader());
        INFO((e ? "" : e.error().detail));
        REQUIRE(e.ok());
        return post(*e);
    }

    std::vector<json> caused_by(const std::string& session, const events::Event& t) {
        std::vector<json> out;
        for (auto& e : aggregate(session))
            if (e["metadata"].value("causation_id", "") == t.id.str()) out.push_back(e);
        return out;
    }
};

// A fork request (named fields, without designated initializers that leave members out).
projections::ForkRequest fork_req(std::string origin, std::int64_t at, std::string prompt = "", std::string model = "",
                                  std::string source = "", std::string key = "") {
    projections::ForkRequest r;
    r.origin = std::move(origin);
    r.at = at;
    r.prompt = std::move(prompt);
    r.model = std::move(model);
    r.source = std::move(source);
    r.key = std::move(key);
    return r;
}

std::string system_of(const json& request) { return request["messages"][0]["content"].get<std::string>(); }
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("a fork re-runs the agent on its origin's history up to the fork position, with its own model",
          "[integration][ai][fork]") {
    Stack s;
    fakes::FakeOpenAI fake;
    auto agent = s.agent(fake.base_url());
    const std::string origin = "session:telegram:42";

    // The origin: three questions, three answers.
    std::vector<events::Event> asked;
    for (auto [q, a] : std::vector<std::pair<std::string, std::string>>{
             {"first question", "first answer"}, {"second question", "second answer"}, {"third question", "third answer"}}) {
        fake.push_text(a);
        asked.push_back(s.message(origin, q));
        REQUIRE(agent.run(asked.back()).ok());
    }
    const auto origin_before = s.aggregate(origin);
    REQUIRE(fake.request_count() == 3);

    // Forked at the second question, no prompt: that question is asked again, of another model.
    fake.push_text("forked answer");
    auto f1 = s.fork(fork_req(origin, asked[1].position.value(), "", "other-model", "cli"));
    const std::string fork1 = f1.aggregate_id;
    CHECK(fork1.rfind("session:telegram:", 0) == 0);
    REQUIRE(agent.run(f1).ok());
    REQUIRE(fake.request_count() == 4);
    auto req = fake.requests().back();
    CHECK(req["model"] == "other-model");
    CHECK(s.overrides.back() == "other-model");
    CHECK(fakes::FakeOpenAI::last_user_message(req) == "second question");
    auto sys = system_of(req);
    INFO(sys);
    CHECK(has(sys, "user: first question"));
    CHECK(has(sys, "assistant: first answer"));
    CHECK_FALSE(has(sys, "second"));  // the re-asked message and everything after it are not history
    CHECK_FALSE(has(sys, "third"));

    auto run = s.caused_by(fork1, f1);
    REQUIRE(run.size() == 3);
    CHECK(run[0]["type"] == "AIProcessingStarted");
    CHECK(run[0]["data"]["trigger_type"] == "SessionForked");
    CHECK(run[0]["data"]["model"] == "other-model");
    CHECK(run[1]["type"] == "MessageGenerated");
    CHECK(run[1]["data"]["text"] == "forked answer");
    CHECK(run[1]["data"]["channel"] == "api");    // never delivered to the origin's Telegram chat
    CHECK(s.aggregate(origin) == origin_before);  // the origin is untouched

    // Replaying the fork (a redelivered SessionForked) asks the model nothing and writes nothing.
    const auto fork_before = s.aggregate(fork1);
    REQUIRE(agent.run(f1).ok());
    CHECK(fake.request_count() == 4);
    CHECK(s.aggregate(fork1) == fork_before);

    // A later message in the fork sees the inherited history and the fork's own answer.
    fake.push_text("fork goes on");
    auto in_fork = s.message(fork1, "and then?");
    REQUIRE(agent.run(in_fork).ok());
    sys = system_of(fake.requests().back());
    CHECK(has(sys, "user: first question"));
    CHECK(has(sys, "user: second question"));
    CHECK(has(sys, "assistant: forked answer"));
    CHECK_FALSE(has(sys, "second answer"));
    CHECK_FALSE(has(sys, "third"));
    CHECK(s.overrides.back() == "other-model");  // every run in the fork keeps the model it was made with

    // A fork of the fork, with a prompt: the whole chain up to its position, then the prompt.
    fake.push_text("shorter answer");
    auto f2 = s.fork(fork_req(fork1, s.caused_by(fork1, f1)[1]["position"].get<std::int64_t>(), "shorter please"));
    CHECK(f2.data["depth"] == 2);
    REQUIRE(agent.run(f2).ok());
    req = fake.requests().back();
    CHECK(fakes::FakeOpenAI::last_user_message(req) == "shorter please");
    sys = system_of(req);
    CHECK(has(sys, "user: first question"));
    CHECK(has(sys, "user: second question"));
    CHECK(has(sys, "assistant: forked answer"));
    CHECK_FALSE(has(sys, "and then?"));  // after the position it forked at
    CHECK_FALSE(has(sys, "third"));
    CHECK(s.overrides.back().empty());

    // A fork with a prompt at an answer keeps that answer in the history.
    fake.push_text("alternative");
    auto f3 = s.fork(fork_req(origin, s.caused_by(origin, asked[1])[1]["position"].get<std::int64_t>(), "what else?"));
    REQUIRE(agent.run(f3).ok());
    sys = system_of(fake.requests().back());
    CHECK(has(sys, "assistant: second answer"));
    CHECK_FALSE(has(sys, "third"));
    CHECK(s.aggregate(origin) == origin_before);
}
