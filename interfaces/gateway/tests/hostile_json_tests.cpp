// Every JSON route of the gateway against bodies built to hurt (nesting 100 000 deep, numbers out of
// range, broken surrogates, U+0000), each authenticated so it reaches the parser: a 400 with the
// reason, nothing stored, and the gateway still answers the next good request.
#include "support.h"
#include "signature.h"

#include "engram/core/json.h"

#include <catch2/catch.hpp>

using namespace engram;
using gateway::test::require_error;
using nlohmann::json;

namespace {

struct Fixture {
    testing::Stack stack{"gw-hostile"};
    std::int64_t now = 1'800'000'000;
    gateway::test::InProcess gw{stack,
                                {{"WEBHOOK_SECRETS", "github=s3cret"},
                                 {"TELEGRAM_MODE", "webhook"},
                                 {"TELEGRAM_BOT_TOKEN", "123456:test-token"},
                                 {"TELEGRAM_API_BASE", "http://127.0.0.1:9"},  // never called: no refusals, no setWebhook
                                 {"TELEGRAM_WEBHOOK_SECRET", "hook-s3cret"},
                                 {"TELEGRAM_ALLOWED_CHAT_IDS", "*"},
                                 {"WEBCHAT_SECRET", "a-test-secret-of-enough-length"}},
                                [this] { return now; }};
    http::Client& client = *gw.client;
    std::string cookie;
    int deliveries = 0;

    Fixture() {
        auto r = client.get("/");
        REQUIRE(r.ok());
        auto sc = r->header("set-cookie");
        REQUIRE(sc.rfind("engram_chat=", 0) == 0);
        cookie = sc.substr(12, sc.find(';') - 12);
    }

    http::ClientResponse send(const std::string& path, const std::string& body, http::Headers h) {
        h.emplace_back("Content-Type", "application/json");
        auto r = client.request("POST", path, body, h);
        REQUIRE(r.ok());
        return *r;
    }
    http::ClientResponse trigger(const std::string& body) { return send("/trigger", body, {}); }
    // Correctly signed and fresh, with a new delivery id each time.
    http::ClientResponse webhook(const std::string& body) {
        return send("/webhooks/github", body,
                    {{"X-Webhook-Timestamp", std::to_string(now)},
                     {"X-Signature-256", "sha256=" + gateway::hmac_sha256_hex("s3cret", std::to_string(now) + "." + body)},
                     {"X-Delivery-Id", "d-" + std::to_string(++deliveries)}});
    }
    http::ClientResponse telegram(const std::string& body) {
        return send("/telegram/webhook", body, {{"X-Telegram-Bot-Api-Secret-Token", "hook-s3cret"}});
    }
    http::ClientResponse chat(const std::string& body) {
        return send("/chat/messages", body, {{"Cookie", "engram_chat=" + cookie}});
    }
};

std::string nested_objects(int levels, const std::string& key = "a") {
    std::string s;
    for (int i = 1; i < levels; ++i) s += "{\"" + key + "\":";
    return s + "{}" + std::string(static_cast<std::size_t>(levels - 1), '}');
}

struct Hostile {
    std::string name, body, detail;
};

// Bodies that every route must refuse as invalid_json, whatever its fields; `levels` keeps each under
// the route's body limit (the web chat takes 64 KiB).
std::vector<Hostile> hostile_bodies(int levels) {
    return {
        {"deep arrays", std::string(static_cast<std::size_t>(levels), '[') + std::string(static_cast<std::size_t>(levels), ']'),
         "nesting deeper than"},
        {"deep arrays, never closed", std::string(static_cast<std::size_t>(levels), '['), "nesting deeper than"},
        {"deep objects", R"({"data":)" + nested_objects(levels) + "}", "nesting deeper than"},
        {"a number no double holds", R"({"update_id":1,"x":1e400,"text":"hi","id":"m1","message":"hi"})", "number out of range"},
        {"an integer beyond 64 bits", R"({"update_id":123456789012345678901234567890})", "integer beyond 64 bits"},
        {"a lone surrogate", R"({"text":"\ud800","message":"\ud800"})", "surrogate"},
        {"not UTF-8", "{\"text\":\"\xff\xfe\"}", "UTF-8"},
    };
}

}  // namespace

TEST_CASE("hostile JSON on every gateway route is a 400 invalid_json with nothing stored", "[integration][gateway][json]") {
    Fixture f;
    using Route = std::function<http::ClientResponse(const std::string&)>;
    const std::vector<std::pair<std::string, Route>> routes = {
        {"/trigger", [&](const std::string& b) { return f.trigger(b); }},
        {"/webhooks/github", [&](const std::string& b) { return f.webhook(b); }},
        {"/telegram/webhook", [&](const std::string& b) { return f.telegram(b); }},
        {"/chat/messages", [&](const std::string& b) { return f.chat(b); }},
    };
    for (const auto& [path, post] : routes) {
        for (const auto& h : hostile_bodies(path == "/chat/messages" ? 10000 : 100000)) {
            INFO(path << ": " << h.name);
            require_error(post(h.body), 400, "invalid_json", h.detail);
            CHECK(f.stack.count_all() == 0);
        }
    }
    // Still serving: one good request on each route.
    CHECK(f.trigger(R"({"source":"api","user_id":"a","message":"hi"})").status == 201);
    CHECK(f.webhook(R"({"action":"opened"})").status == 201);
    CHECK(f.telegram(R"({"update_id":1,"message":{"message_id":1,"chat":{"id":5},"text":"hi"}})").status == 200);
    CHECK(f.chat(R"({"id":"m-1","text":"hi"})").status == 201);
    CHECK(f.stack.count_all() == 4);
}

TEST_CASE("U+0000 from a client is a 400 naming the field, from Telegram it becomes U+FFFD", "[integration][gateway][json]") {
    Fixture f;
    require_error(f.trigger(R"({"source":"api","user_id":"a","message":"a\u0000b"})"), 400, "invalid_request",
                  "U+0000 at /message");
    require_error(f.webhook(R"({"note":{"k\u0000":1}})"), 400, "invalid_request", "U+0000 at /payload/note/k");
    require_error(f.chat(R"({"id":"m-1","text":"a\u0000b"})"), 400, "invalid_request", "U+0000 at /text");
    CHECK(f.stack.count_all() == 0);
    // Telegram retries what it is refused, then drops it: the message is kept, its NUL made visible.
    auto r = f.telegram(R"({"update_id":2,"message":{"message_id":2,"chat":{"id":5},"text":"a\u0000b"}})");
    CHECK(r.status == 200);
    auto evs = f.stack.aggregate("session:telegram:5");
    REQUIRE(evs.size() == 1);
    CHECK(evs[0]["data"]["text"] ==
          "a\xEF\xBF\xBD"
          "b");
    // A trigger field over the catalog's limit is the client's too: 400, not 500.
    require_error(f.trigger(R"({"source":"api","user_id":")" + std::string(300, 'u') + R"(","message":"hi"})"), 400,
                  "invalid_request", "user_id");
    CHECK(f.stack.count_all() == 1);
}

TEST_CASE("a webhook payload keeps the limit minus the two levels it is stored under", "[integration][gateway][json]") {
    Fixture f;
    // data.payload: the payload's innermost object may sit 62 levels below the payload itself.
    auto at_limit = nested_objects(kMaxJsonDepth - 1);
    REQUIRE(json_depth(json::parse(at_limit)) == kMaxJsonDepth - 2);
    auto ok = f.webhook(at_limit);
    INFO(ok.body);
    REQUIRE(ok.status == 201);
    auto evs = f.stack.aggregate("webhook:github");
    REQUIRE(evs.size() == 1);
    CHECK(evs[0]["data"]["payload"] == json::parse(at_limit));
    require_error(f.webhook(nested_objects(kMaxJsonDepth)), 400, "invalid_json", "nesting deeper than 62 levels");
    CHECK(f.stack.count_all() == 1);
}
