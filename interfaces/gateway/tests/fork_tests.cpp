// Forks through the gateway, in-process against the real event store: POST /sessions/{id}/fork (API
// token, driven with Python and curl), the web chat's POST /chat/fork and GET /chat/history (cookie);
// every refused request writes nothing.
#include "support.h"

#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

using namespace engram;
using gateway::test::require_error;
using nlohmann::json;

namespace {

struct Fixture {
    testing::Stack stack{"gwfork", {{"ENGRAM_API_TOKEN", "t0k"}}};
    gateway::test::InProcess gw{stack, {{"ENGRAM_API_TOKEN", "t0k"}, {"WEBCHAT_SECRET", "a-test-secret-of-enough-length"}}};
    http::Client store{stack.url()};
    http::Headers auth = {{"Authorization", "Bearer t0k"}};

    // Appends to the store directly; returns the event's position.
    std::int64_t append(const std::string& type, const std::string& session, json data) {
        auto r = store.post_json("/events", {{"type", type}, {"aggregate_id", session}, {"data", std::move(data)}}, auth);
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
        return r->json()["events"][0]["position"].get<std::int64_t>();
    }
    std::int64_t user_says(const std::string& session, const std::string& text) {
        return append("MessageReceived", session,
                      {{"channel", "api"}, {"text", text}, {"user_id", "api:alice"}, {"session_id", session}});
    }
    std::int64_t assistant_says(const std::string& session, const std::string& text) {
        return append("MessageGenerated", session, {{"channel", "api"}, {"text", text}});
    }
    json fork(const std::string& session, const std::string& body, std::map<std::string, std::string> headers = {}) {
        headers.emplace("Authorization", "Bearer t0k");
        headers.emplace("Content-Type", "application/json");
        return testing::python_request(gw.app->port(), "POST", "/sessions/" + session + "/fork", headers, body);
    }
    std::int64_t forks() { return stack.count("SessionForked"); }
    std::vector<json> events_of(const std::string& session) {
        auto r = store.get("/aggregates/" + session + "/events", auth);
        REQUIRE(r.ok());
        return r->json()["events"].get<std::vector<json>>();
    }

    std::string new_browser() {
        auto r = gw.client->get("/");
        REQUIRE(r.ok());
        auto sc = r->header("set-cookie");
        REQUIRE(sc.rfind("engram_chat=", 0) == 0);
        return sc.substr(12, sc.find(';') - 12);
    }
    http::ClientResponse chat(const std::string& method, const std::string& path, const std::string& cookie,
                              const std::string& body = "") {
        http::Headers h = {{"Content-Type", "application/json"}};
        if (!cookie.empty()) h.emplace_back("Cookie", "engram_chat=" + cookie);
        auto r = gw.client->request(method, path, body, h);
        REQUIRE(r.ok());
        return *r;
    }
};

json body_of(const json& answer) { return json::parse(answer["body"].get<std::string>()); }

}  // namespace

TEST_CASE("POST /sessions/{id}/fork appends a SessionForked pointing at its origin; a retried key forks once",
          "[integration][gateway][fork]") {
    Fixture f;
    const std::string origin = "session:api:origin";
    auto q1 = f.user_says(origin, "first question");
    f.assistant_says(origin, "first answer");
    const auto origin_events = f.events_of(origin);

    auto r = f.fork(origin, json{{"at", q1}, {"model", "other-model"}}.dump());
    INFO(r.dump());
    REQUIRE(r["status"] == 201);
    auto answer = body_of(r);
    const std::string fork = answer["session_id"];
    CHECK(fork.rfind("session:api:", 0) == 0);
    CHECK(answer["origin_session_id"] == origin);
    CHECK(answer["at_position"] == q1);
    auto stored = f.events_of(fork);
    REQUIRE(stored.size() == 1);
    CHECK(stored[0]["type"] == "SessionForked");
    CHECK(stored[0]["id"] == answer["event_id"]);
    CHECK(stored[0]["data"]["origin_session_id"] == origin);
    CHECK(stored[0]["data"]["at_position"] == q1);
    CHECK(stored[0]["data"]["model"] == "other-model");
    CHECK(stored[0]["data"]["user_id"] == "api:alice");
    CHECK(stored[0]["data"]["source"] == "api");
    CHECK(f.events_of(origin) == origin_events);  // nothing copied, nothing written to the origin

    // The same Idempotency-Key, from curl: the same fork, stored once.
    auto curl = [&](const std::string& key) {
        return testing::run({"curl", "-s", "-w", "\n%{http_code}", "-XPOST", "-H", "Authorization: Bearer t0k", "-H",
                             "Content-Type: application/json", "-H", "Idempotency-Key: " + key, "--data",
                             json{{"at", q1}, {"prompt", "say it differently"}}.dump(),
                             f.gw.app->url() + "/sessions/" + origin + "/fork"});
    };
    auto a = curl("retry-1"), b = curl("retry-1");
    INFO(a.output << " / " << b.output);
    CHECK(a.output.substr(a.output.rfind('\n') + 1) == "201");
    CHECK(b.output.substr(b.output.rfind('\n') + 1) == "200");
    auto ja = json::parse(a.output.substr(0, a.output.rfind('\n'))), jb = json::parse(b.output.substr(0, b.output.rfind('\n')));
    CHECK(ja["session_id"] == jb["session_id"]);
    CHECK(ja["session_id"] != fork);
    CHECK(f.forks() == 2);

    // The same key for another fork is a conflict, not a second fork.
    auto other = f.fork(origin, json{{"at", q1}, {"prompt", "something else"}}.dump(), {{"Idempotency-Key", "retry-1"}});
    require_error(other, 409, "id_conflict");
    CHECK(f.forks() == 2);

    // A fork of the fork.
    auto deeper = f.fork(fork, json{{"at", stored[0]["position"]}, {"prompt", "and again"}}.dump());
    REQUIRE(deeper["status"] == 201);
    auto d = f.events_of(body_of(deeper)["session_id"]);
    REQUIRE(d.size() == 1);
    CHECK(d[0]["data"]["depth"] == 2);
    CHECK(d[0]["data"]["user_id"] == "api:alice");
}

TEST_CASE("bad fork requests are refused with a clear reason and nothing written", "[integration][gateway][fork]") {
    Fixture f;
    const std::string origin = "session:api:o2";
    auto q = f.user_says(origin, "hello");
    const std::string silent = "session:api:silent";
    auto s = f.assistant_says(silent, "nobody asked");
    const auto port = f.gw.app->port();

    require_error(testing::python_request(port, "POST", "/sessions/" + origin + "/fork", {{"Content-Type", "application/json"}},
                                          json{{"at", q}}.dump()),
                  401, "unauthorized");
    require_error(testing::python_request(port, "GET", "/sessions/" + origin + "/fork", {{"Authorization", "Bearer t0k"}}), 405,
                  "method_not_allowed");
    require_error(
        testing::python_request(port, "POST", "/sessions/" + origin + "/fork",
                                {{"Authorization", "Bearer t0k"}, {"Content-Type", "text/plain"}}, json{{"at", q}}.dump()),
        415, "unsupported_media_type");
    require_error(testing::python_request(port, "POST", "/sessions/" + origin, {{"Authorization", "Bearer t0k"}}), 404,
                  "not_found", "POST /sessions/{id}/fork");
    require_error(f.fork(origin, "{nope"), 400, "invalid_json");
    require_error(f.fork(origin, "[1]"), 400, "invalid_request", "JSON object");
    require_error(f.fork(origin, "{}"), 400, "invalid_request", "field 'at' must be an integer");
    require_error(f.fork(origin, R"({"at": "3"})"), 400, "invalid_request", "field 'at' must be an integer");
    require_error(f.fork(origin, R"({"at": 0})"), 400, "invalid_parameter", "'at' must be a global position >= 1");
    require_error(f.fork(origin, json{{"at", q}, {"prompt", ""}}.dump()), 400, "invalid_request", "'prompt'");
    require_error(f.fork(origin, json{{"at", q}, {"model", 5}}.dump()), 400, "invalid_request", "'model'");
    require_error(f.fork(origin, json{{"at", q}, {"model", std::string(200, 'm')}}.dump()), 400, "invalid_parameter",
                  "'model' is longer than 128");
    require_error(f.fork("session:api:nobody", json{{"at", q}}.dump()), 404, "not_found", "no session 'session:api:nobody'");
    require_error(f.fork("user:alice", json{{"at", q}}.dump()), 400, "invalid_parameter", "session aggregate id");
    require_error(f.fork(silent, json{{"at", s - 1}}.dump()), 400, "invalid_parameter", "before the first event");
    require_error(f.fork(silent, json{{"at", s}}.dump()), 400, "invalid_parameter", "to ask again: give a prompt");
    require_error(f.fork(origin, json{{"at", q}}.dump(), {{"Idempotency-Key", std::string(300, 'k')}}), 400, "invalid_request",
                  "Idempotency-Key");
    CHECK(f.forks() == 0);
    CHECK(f.events_of(origin).size() == 1);
    CHECK(f.fork(origin, json{{"at", q}}.dump())["status"] == 201);  // the same origin, asked properly
}

TEST_CASE("the web chat forks its session and moves to the fork, which shows the inherited history",
          "[integration][gateway][fork]") {
    Fixture f;
    auto a = f.new_browser();
    auto said = f.chat("POST", "/chat/messages", a, json{{"id", "m1"}, {"text", "web question"}}.dump());
    REQUIRE(said.status == 201);
    const std::string origin = said.json()["session_id"];
    auto p = said.json()["position"].get<std::int64_t>();
    f.assistant_says(origin, "web answer");
    f.user_says(origin, "after the fork");

    // Refused: no cookie, no id, a bad position, a model (not the browser's to choose); nothing written.
    require_error(f.chat("POST", "/chat/fork", "", json{{"id", "f1"}, {"at", p}}.dump()), 401, "unauthorized");
    require_error(f.chat("POST", "/chat/fork", a, json{{"at", p}}.dump()), 400, "invalid_request", "'id'");
    require_error(f.chat("POST", "/chat/fork", a, json{{"id", "f1"}, {"at", 0}}.dump()), 400, "invalid_parameter", ">= 1");
    require_error(f.chat("POST", "/chat/fork", a, json{{"id", "f1"}, {"at", p}, {"model", "x"}}.dump()), 400, "invalid_request",
                  "'model' is not accepted");
    require_error(f.chat("GET", "/chat/fork", a), 405, "method_not_allowed");
    require_error(f.chat("GET", "/chat/history", ""), 401, "unauthorized");
    CHECK(f.forks() == 0);

    auto r = f.chat("POST", "/chat/fork", a, json{{"id", "f1"}, {"at", p}, {"prompt", "ask it otherwise"}}.dump());
    INFO(r.body);
    REQUIRE(r.status == 201);
    const std::string fork = r.json()["session_id"];
    CHECK(fork.rfind("session:web:", 0) == 0);
    auto sc = r.header("set-cookie");
    REQUIRE(sc.rfind("engram_chat=", 0) == 0);
    auto b = sc.substr(12, sc.find(';') - 12);
    CHECK(b.rfind(fork.substr(12), 0) == 0);  // the new cookie is the fork's session
    auto again = f.chat("POST", "/chat/fork", a, json{{"id", "f1"}, {"at", p}, {"prompt", "ask it otherwise"}}.dump());
    CHECK(again.status == 200);  // the page's retry: the same fork
    CHECK(again.json()["session_id"] == fork);
    CHECK(f.forks() == 1);

    auto session = f.chat("GET", "/chat/session", b);
    CHECK(session.json()["session_id"] == fork);
    auto h = f.chat("GET", "/chat/history", b);
    REQUIRE(h.status == 200);
    auto inherited = h.json()["inherited"];
    REQUIRE(inherited.size() == 1);  // the origin up to the position: the question, not what came after
    CHECK(inherited[0]["data"]["text"] == "web question");
    CHECK(inherited[0]["aggregate_id"] == origin);
    CHECK(f.chat("GET", "/chat/history", a).json()["inherited"].empty());  // the origin is no fork
}
