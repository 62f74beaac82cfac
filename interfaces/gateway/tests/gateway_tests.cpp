// The gateway in-process against the real event store binary: every ingress answers success only
// after its event is committed; every bad input is refused with nothing stored.
#include "support.h"
#include "signature.h"

#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

using namespace engram;
using gateway::test::require_error;
using nlohmann::json;

namespace {

struct Fixture {
    testing::Stack stack{"gateway"};
    std::int64_t now = 1'800'000'000;
    gateway::test::InProcess gw;
    std::unique_ptr<gateway::App>& app = gw.app;
    std::unique_ptr<http::Client>& client = gw.client;

    explicit Fixture(std::map<std::string, std::string> extra = {})
        : gw(stack, with_defaults(std::move(extra)), [this] { return now; }) {}
    static std::map<std::string, std::string> with_defaults(std::map<std::string, std::string> extra) {
        extra.emplace("WEBHOOK_SECRETS", "github=s3cret,other=x");
        return extra;
    }
    std::int64_t count(const std::string& type) { return stack.count(type); }
    http::ClientResponse webhook(const std::string& source, const std::string& body, const std::string& secret, std::int64_t ts,
                                 const std::string& delivery = "d-1") {
        http::Headers h = {{"Content-Type", "application/json"}, {"X-Webhook-Timestamp", std::to_string(ts)}};
        if (!secret.empty())
            h.emplace_back("X-Signature-256", "sha256=" + gateway::hmac_sha256_hex(secret, std::to_string(ts) + "." + body));
        if (!delivery.empty()) h.emplace_back("X-Delivery-Id", delivery);
        auto r = client->request("POST", "/webhooks/" + source, body, h);
        REQUIRE(r.ok());
        return *r;
    }
};

}  // namespace

TEST_CASE("POST /trigger appends TriggerReceived after commit and a retried key stores once", "[integration][gateway]") {
    Fixture f;
    auto r = f.client->post_json("/trigger", {{"source", "api"}, {"user_id", "alice"}, {"message", "Summarise my day"}});
    REQUIRE(r.ok());
    INFO(r->body);
    REQUIRE(r->status == 201);
    auto session = r->json()["session_id"].get<std::string>();
    CHECK(session.rfind("session:api:", 0) == 0);
    CHECK(f.count("TriggerReceived") == 1);

    http::Headers key = {{"Idempotency-Key", "k-42"}};
    json body = {{"source", "api"}, {"user_id", "alice"}, {"session_id", session}, {"message", "again"}};
    auto a = f.client->post_json("/trigger", body, key);
    auto b = f.client->post_json("/trigger", body, key);
    REQUIRE(a->status == 201);
    REQUIRE(b->status == 200);
    CHECK(a->json()["event_id"] == b->json()["event_id"]);
    CHECK(a->json()["session_id"] == session);
    CHECK(f.count("TriggerReceived") == 2);
}

TEST_CASE("bad trigger input is refused with nothing stored", "[integration][gateway]") {
    Fixture f(std::map<std::string, std::string>{{"ENGRAM_API_TOKEN", "t0k"}});
    http::Headers auth = {{"Authorization", "Bearer t0k"}, {"Content-Type", "application/json"}};
    auto post = [&](const std::string& body, const http::Headers& h) {
        auto r = f.client->request("POST", "/trigger", body, h);
        REQUIRE(r.ok());
        return *r;
    };
    require_error(post(R"({"source":"api","user_id":"u","message":"hi"})", {}), 401, "unauthorized");
    // What a web page can send without a CORS preflight is never JSON.
    for (const char* type : {"text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                             "multipart/form-data; boundary=x", ""}) {
        INFO(type);
        http::Headers h = {{"Authorization", "Bearer t0k"}};
        if (*type) h.emplace_back("Content-Type", type);
        require_error(post(R"({"source":"api","user_id":"u","message":"hi"})", h), 415, "unsupported_media_type");
    }
    require_error(post("{nope", auth), 400, "invalid_json");
    require_error(post("[1]", auth), 400, "invalid_request");
    require_error(post(R"({"user_id":"u","message":"hi"})", auth), 400, "invalid_request", "source");
    require_error(post(R"({"source":"api","message":"hi"})", auth), 400, "invalid_request", "user_id");
    require_error(post(R"({"source":"api","user_id":"u","message":""})", auth), 400, "invalid_request", "message");
    require_error(post(R"({"source":"api","user_id":"u","message":5})", auth), 400, "invalid_request", "message");
    require_error(post(R"({"source":"api","user_id":"u","message":"hi","session_id":7})", auth), 400, "invalid_request",
                  "session_id");
    require_error(post(std::string(R"({"source":"api","user_id":"u","message":")") + std::string(1 << 20, 'x') + "\"}", auth),
                  413, "payload_too_large");
    CHECK(f.count("TriggerReceived") == 0);
    CHECK(post(R"({"source":"api","user_id":"u","message":"hi"})", auth).status == 201);
}

TEST_CASE("signed webhooks: a valid delivery is stored once, every bad one is refused with nothing stored",
          "[integration][gateway]") {
    Fixture f;
    std::string body = R"({"action":"opened","number":7})";
    auto ok = f.webhook("github", body, "s3cret", f.now);
    INFO(ok.body);
    REQUIRE(ok.status == 201);
    auto again = f.webhook("github", body, "s3cret", f.now + 5);  // the sender retries the same delivery
    REQUIRE(again.status == 200);
    CHECK(again.json()["event_id"] == ok.json()["event_id"]);
    CHECK(f.count("WebhookReceived") == 1);

    require_error(f.webhook("github", body, "wrong", f.now, "d-2"), 401, "unauthorized", "signature");
    require_error(f.webhook("github", body, "", f.now, "d-3"), 401, "unauthorized", "X-Signature-256");
    require_error(f.webhook("github", body, "s3cret", f.now - 301, "d-4"), 401, "unauthorized", "Timestamp");
    require_error(f.webhook("github", body, "s3cret", f.now + 301, "d-5"), 401, "unauthorized", "Timestamp");
    require_error(f.webhook("nobody", body, "s3cret", f.now, "d-6"), 404, "not_found");
    require_error(f.webhook("github", "{broken", "s3cret", f.now, "d-7"), 400, "invalid_json");
    // The signature of another source's secret does not open this one.
    require_error(f.webhook("github", body, "x", f.now, "d-8"), 401, "unauthorized");
    // A timestamp header that is not a number.
    {
        http::Headers h = {{"X-Webhook-Timestamp", "soon"},
                           {"X-Signature-256", "sha256=" + gateway::hmac_sha256_hex("s3cret", "soon." + body)}};
        auto r = f.client->request("POST", "/webhooks/github", body, h);
        require_error(*r, 401, "unauthorized", "Timestamp");
    }
    std::string big = R"({"blob":")" + std::string(1 << 20, 'x') + "\"}";
    require_error(f.webhook("github", big, "s3cret", f.now, "d-9"), 413, "payload_too_large");
    CHECK(f.count("WebhookReceived") == 1);

    // Without a delivery id, the body's hash is the id: the same body is stored once.
    REQUIRE(f.webhook("github", R"({"n":1})", "s3cret", f.now, "").status == 201);
    REQUIRE(f.webhook("github", R"({"n":1})", "s3cret", f.now, "").status == 200);
    CHECK(f.count("WebhookReceived") == 2);
}

TEST_CASE("the gateway answers 503 while the store is down, and nothing is half-stored", "[integration][gateway]") {
    Fixture f;
    f.stack.store().kill9();
    auto r = f.client->post_json("/trigger", {{"source", "api"}, {"user_id", "u"}, {"message", "hi"}});
    require_error(*r, 503, "unavailable");
    CHECK(f.client->get("/readyz")->status == 503);
}

TEST_CASE("a web page cannot drive a gateway without a token: JSON only, loopback Host names only",
          "[integration][gateway][guard]") {
    Fixture f;
    const auto port = f.app->port();
    const std::string body = R"({"source":"api","user_id":"u","message":"hi"})";
    // The "simple" cross-site POST a browser sends without asking: text/plain.
    require_error(gateway::test::python_request(port, "POST", "/trigger", {{"Content-Type", "text/plain"}}, body), 415,
                  "unsupported_media_type", "application/json");
    {
        auto form = testing::run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-XPOST", "--data-urlencode",
                                  "message=hi", f.app->url() + "/trigger"});
        CHECK(form.output == "415");
    }
    // A page that re-points its own name at 127.0.0.1 (DNS rebinding) sends that name as Host.
    for (const char* host : {"evil.example", "evil.example:8081", "localhost.evil.example", "127.0.0.1.nip.io"}) {
        INFO(host);
        require_error(
            gateway::test::python_request(port, "POST", "/trigger", {{"Host", host}, {"Content-Type", "application/json"}}, body),
            421, "host_not_allowed", "ENGRAM_ALLOWED_HOSTS");
        require_error(gateway::test::python_request(port, "GET", "/", {{"Host", host}}), 421, "host_not_allowed");
        require_error(gateway::test::python_request(port, "GET", "/readyz", {{"Host", host}}), 421, "host_not_allowed");
        CHECK(gateway::test::python_request(port, "GET", "/", {{"Host", host}})["set_cookie"].empty());
    }
    CHECK(f.stack.count_all() == 0);
    // The gateway still serves what is addressed to it.
    for (const std::string& host :
         std::vector<std::string>{"localhost:" + std::to_string(port), "chat.localhost", "127.0.0.1", "[::1]:8081"}) {
        INFO(host);
        auto r = gateway::test::python_request(port, "POST", "/trigger",
                                               {{"Host", host}, {"Content-Type", "application/json; charset=utf-8"}}, body);
        INFO(r.dump());
        CHECK(r["status"] == 201);
    }
    CHECK(f.count("TriggerReceived") == 4);
}

TEST_CASE("ENGRAM_ALLOWED_HOSTS adds names, and with a token any Host is served given the token",
          "[integration][gateway][guard]") {
    {
        Fixture f(std::map<std::string, std::string>{{"ENGRAM_ALLOWED_HOSTS", "engram.lan,*.example.org"}});
        const auto port = f.app->port();
        CHECK(gateway::test::python_request(port, "GET", "/healthz", {{"Host", "engram.lan:8081"}})["status"] == 200);
        CHECK(gateway::test::python_request(port, "GET", "/healthz", {{"Host", "chat.example.org"}})["status"] == 200);
        require_error(gateway::test::python_request(port, "GET", "/healthz", {{"Host", "example.org"}}), 421, "host_not_allowed");
        require_error(gateway::test::python_request(port, "GET", "/healthz", {{"Host", "engram.lan.evil"}}), 421,
                      "host_not_allowed");
    }
    Fixture t(std::map<std::string, std::string>{{"ENGRAM_API_TOKEN", "t0k"}});
    const auto port = t.app->port();
    const std::string body = R"({"source":"api","user_id":"u","message":"hi"})";
    require_error(gateway::test::python_request(port, "POST", "/trigger",
                                                {{"Host", "engram.example.com"}, {"Content-Type", "application/json"}}, body),
                  401, "unauthorized");
    auto ok = gateway::test::python_request(
        port, "POST", "/trigger",
        {{"Host", "engram.example.com"}, {"Content-Type", "application/json"}, {"Authorization", "Bearer t0k"}}, body);
    CHECK(ok["status"] == 201);
    CHECK(t.count("TriggerReceived") == 1);
}

TEST_CASE("/trigger writes only in its own namespace: no other channel's session or user", "[integration][gateway]") {
    Fixture f;
    auto post = [&](json body) {
        auto r = f.client->post_json("/trigger", body);
        REQUIRE(r.ok());
        return *r;
    };
    auto base = [](json extra) {
        json b = {{"source", "api"}, {"user_id", "alice"}, {"message", "what do you know about me?"}};
        for (auto& [k, v] : extra.items()) b[k] = v;
        return b;
    };
    // Another channel's user (their memories) or session (its delivery: a Telegram chat, an address).
    for (const char* user : {"telegram:42", "web:6f1c1a52-3d4e-4e1a-9d43-0d6b1f0f7a11", "email:a@b.c", "user:api:x", "api:"}) {
        INFO(user);
        require_error(post(base({{"user_id", user}})), 403, "namespace_not_allowed", "user_id");
    }
    for (const char* session : {"session:telegram:42", "session:email:victim@example.com", "session:web:abc", "session:slack:C1",
                                "session:webhook:github", "session:api:", "session:"}) {
        INFO(session);
        require_error(post(base({{"session_id", session}})), 403, "namespace_not_allowed", "session_id");
    }
    require_error(post(base({{"user_id", std::string(300, 'u')}})), 400, "invalid_request", "256");
    CHECK(f.stack.count_all() == 0);

    // Its own namespace: the user and session are api's, whatever form they are given in.
    auto a = post(base({{"session_id", "chat-1"}}));
    REQUIRE(a.status == 201);
    CHECK(a.json()["session_id"] == "session:api:chat-1");
    CHECK(a.json()["user_id"] == "api:alice");
    auto b = post(base({{"session_id", "session:api:chat-1"}, {"user_id", "api:alice"}}));
    REQUIRE(b.status == 201);
    CHECK(b.json()["session_id"] == "session:api:chat-1");
    auto evs = f.stack.aggregate("session:api:chat-1");
    REQUIRE(evs.size() == 2);
    for (auto& e : evs) {
        CHECK(e["data"]["user_id"] == "api:alice");
        CHECK(e["metadata"]["user_id"] == "api:alice");
        CHECK(e["data"]["session_id"] == "session:api:chat-1");
    }
}
