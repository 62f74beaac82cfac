// POST /trigger?wait=N: the answer waits for the run the trigger starts. The run's events are
// appended here as the AI processor would append them (the waiter only reads the log).
#include "support.h"

#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

#include <future>
#include <thread>

using namespace engram;
using namespace std::chrono_literals;
using gateway::test::require_error;
using nlohmann::json;

namespace {

struct Fixture {
    testing::Stack stack{"trigger-wait"};
    gateway::test::InProcess gw;
    explicit Fixture(std::map<std::string, std::string> env = {}) : gw(stack, env) {}

    // The only TriggerReceived of `session` (waits for it): its id and position.
    std::pair<std::string, std::int64_t> trigger_of(const std::string& session) {
        std::pair<std::string, std::int64_t> out;
        REQUIRE(testing::eventually([&] {
            auto evs = stack.aggregate(session);
            for (auto& e : evs)
                if (e["type"] == "TriggerReceived") out = {e["id"].get<std::string>(), e["position"].get<std::int64_t>()};
            return !out.first.empty();
        }));
        return out;
    }
    void append(const std::string& session, const std::string& type, json data) {
        http::Client c(stack.url());
        auto r = c.post_json("/events", {{"type", type}, {"aggregate_id", session}, {"data", std::move(data)}});
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
    }
    // What the AI processor writes for a run of `trigger`, with one message of another run between.
    void run(const std::string& session, const std::string& trigger, const std::string& run_id, const std::string& text) {
        append(session, "AIProcessingStarted",
               {{"run_id", run_id}, {"trigger_event_id", trigger}, {"model", "fake"}, {"provider", "fake"}});
        append(session, "MessageGenerated", {{"text", "not this one"}, {"channel", "api"}, {"run_id", Uuid::v4().str()}});
        append(session, "MessageGenerated", {{"text", text}, {"channel", "api"}, {"run_id", run_id}});
        append(session, "AIProcessingCompleted",
               {{"run_id", run_id}, {"trigger_event_id", trigger}, {"stop_reason", "end_turn"}, {"iterations", 1}});
    }
};

std::string body_for(const std::string& session, const std::string& message) {
    return json{{"source", "script"}, {"user_id", "alice"}, {"session_id", session}, {"message", message}}.dump();
}

}  // namespace

TEST_CASE("POST /trigger?wait answers with the run's messages once it completes, driven from Python", "[integration][gateway]") {
    Fixture f;
    const std::string session = "session:api:wait-1";
    auto started = std::chrono::steady_clock::now();
    auto answer = std::async(std::launch::async, [&] {
        return testing::python_request(f.gw.app->port(), "POST", "/trigger?wait=30", {{"Content-Type", "application/json"}},
                                       body_for(session, "what is my cat called?"));
    });
    auto [trigger, pos] = f.trigger_of(session);
    CHECK(answer.wait_for(300ms) == std::future_status::timeout);  // still waiting for the run
    const auto run1 = Uuid::v4().str();
    f.run(session, trigger, run1, "Tom.");
    auto r = answer.get();
    INFO(r.dump());
    REQUIRE(r["status"] == 200);
    auto body = json::parse(r["body"].get<std::string>());
    CHECK(body["event_id"] == trigger);
    CHECK(body["position"] == pos);
    CHECK(body["session_id"] == session);
    CHECK(body["run"] == json{{"state", "completed"}, {"run_id", run1}, {"stop_reason", "end_turn"}});
    REQUIRE(body["messages"].size() == 1);
    CHECK(body["messages"][0]["text"] == "Tom.");
    CHECK(std::chrono::steady_clock::now() - started < 20s);

    // An idempotent retry of a finished run answers at once, from the log.
    http::Headers key = {{"Idempotency-Key", "k1"}};
    const std::string s2 = "session:api:wait-2";
    auto first = std::async(std::launch::async, [&] {
        return f.gw.client->request("POST", "/trigger?wait=30", body_for(s2, "hello"),
                                    {{"Content-Type", "application/json"}, {"Idempotency-Key", "k1"}});
    });
    auto [t2, p2] = f.trigger_of(s2);
    f.run(s2, t2, Uuid::v4().str(), "Hello!");
    auto a = first.get();
    REQUIRE(a.ok());
    REQUIRE(a->status == 200);
    auto again = f.gw.client->request("POST", "/trigger?wait=30", body_for(s2, "hello"),
                                      {{"Content-Type", "application/json"}, {"Idempotency-Key", "k1"}});
    REQUIRE(again.ok());
    INFO(again->body);
    CHECK(again->status == 200);
    CHECK(again->json()["messages"][0]["text"] == "Hello!");
    CHECK(f.stack.count("TriggerReceived", s2) == 1);
}

TEST_CASE("POST /trigger?wait answers 202 with what is known when the run does not finish in time", "[integration][gateway]") {
    Fixture f;
    const std::string session = "session:api:slow";
    auto t0 = std::chrono::steady_clock::now();
    auto r = f.gw.client->request("POST", "/trigger?wait=1", body_for(session, "anyone there?"),
                                  {{"Content-Type", "application/json"}});
    auto took = std::chrono::steady_clock::now() - t0;
    REQUIRE(r.ok());
    INFO(r->body);
    REQUIRE(r->status == 202);
    CHECK(r->json()["run"]["state"] == "pending");
    CHECK(r->json()["messages"] == json::array());
    CHECK(took >= 900ms);
    CHECK(took < 10s);
    CHECK(f.stack.count("TriggerReceived", session) == 1);  // stored: the run goes on without the waiter
    // wait=0 is the plain trigger.
    auto plain = f.gw.client->post_json("/trigger", json::parse(body_for(session, "x")));
    REQUIRE(plain.ok());
    CHECK(plain->status == 201);
}

TEST_CASE("POST /trigger?wait: a bad wait and one waiter too many are refused with nothing written", "[integration][gateway]") {
    Fixture f(std::map<std::string, std::string>{{"GATEWAY_TRIGGER_MAX_WAITS", "1"}});
    const http::Headers json_type = {{"Content-Type", "application/json"}};
    for (const char* w : {"abc", "61", "-1", "1.5", "", "999999999999"}) {
        INFO(w);
        auto r = f.gw.client->request("POST", std::string("/trigger?wait=") + w, body_for("session:api:bad", "x"), json_type);
        REQUIRE(r.ok());
        require_error(*r, 400, "invalid_parameter", "wait");
    }
    CHECK(f.stack.count("TriggerReceived") == 0);

    auto holder = std::async(std::launch::async, [&] {
        return f.gw.client->request("POST", "/trigger?wait=3", body_for("session:api:first", "x"), json_type);
    });
    f.trigger_of("session:api:first");  // the one slot is taken
    http::Client other(f.gw.app->url());
    auto r = other.request("POST", "/trigger?wait=3", body_for("session:api:second", "x"), json_type);
    REQUIRE(r.ok());
    require_error(*r, 429, "too_many_waits");
    CHECK(f.stack.count("TriggerReceived", "session:api:second") == 0);
    auto h = holder.get();
    REQUIRE(h.ok());
    CHECK(h->status == 202);
    // The slot is free again.
    auto later = other.request("POST", "/trigger?wait=1", body_for("session:api:second", "x"), json_type);
    REQUIRE(later.ok());
    CHECK(later->status == 202);
    CHECK(f.stack.count("TriggerReceived", "session:api:second") == 1);
}

TEST_CASE("POST /trigger?wait: a gateway that stops answers its waiting requests", "[integration][gateway]") {
    Fixture f;
    auto waiting = std::async(std::launch::async, [&] {
        return f.gw.client->request("POST", "/trigger?wait=60", body_for("session:api:stop", "x"),
                                    {{"Content-Type", "application/json"}});
    });
    f.trigger_of("session:api:stop");
    std::this_thread::sleep_for(300ms);
    auto t0 = std::chrono::steady_clock::now();
    f.gw.app->stop();
    auto r = waiting.get();
    CHECK(std::chrono::steady_clock::now() - t0 < 10s);
    REQUIRE(r.ok());
    CHECK(r->status == 202);
}
