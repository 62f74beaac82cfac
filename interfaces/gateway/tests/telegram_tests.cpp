// Telegram ingress against the real event store and a fake Bot API: an update is stored once, only
// after commit; refused chats are recorded and answered once; a 409 is reported, not hammered; bad
// webhook input changes nothing; kill -9 of the gateway mid-stream loses and doubles nothing.
#include "support.h"

#include "engram/http/client.h"
#include "engram/testing/testing.h"
#include "fake_telegram.h"

#include <catch2/catch.hpp>
#include <random>
#include <thread>

using namespace engram;
using namespace std::chrono_literals;
using gateway::test::require_error;
using nlohmann::json;

namespace {

const std::string kChat = "111";
const std::string kStranger = "333";

json text_update(std::int64_t update_id, const std::string& chat, const std::string& text) {
    return {{"update_id", update_id},
            {"message",
             {{"message_id", update_id + 1000},
              {"date", 1800000000},
              {"chat", {{"id", std::stoll(chat)}, {"type", "private"}}},
              {"from", {{"id", std::stoll(chat)}, {"is_bot", false}, {"first_name", "T"}}},
              {"text", text}}}};
}

struct Gateway {
    gateway::test::InProcess gw;
    std::unique_ptr<gateway::App>& app = gw.app;
    std::unique_ptr<http::Client>& client = gw.client;

    Gateway(testing::Stack& s, fakes::FakeTelegram& t, std::map<std::string, std::string> extra)
        : gw(s, with_telegram(t, std::move(extra))) {}
    static std::map<std::string, std::string> with_telegram(fakes::FakeTelegram& t, std::map<std::string, std::string> extra) {
        std::map<std::string, std::string> env = {{"TELEGRAM_BOT_TOKEN", t.token()},
                                                  {"TELEGRAM_API_BASE", t.base_url()},
                                                  {"TELEGRAM_ALLOWED_CHAT_IDS", kChat},
                                                  {"TELEGRAM_POLL_TIMEOUT_S", "1"}};
        for (auto& [k, v] : extra) env[k] = v;
        return env;
    }
    http::ClientResponse post_update(const std::string& body, const std::string& secret) {
        http::Headers h = {{"Content-Type", "application/json"}};
        if (!secret.empty()) h.emplace_back("X-Telegram-Bot-Api-Secret-Token", secret);
        auto r = client->request("POST", "/telegram/webhook", body, h);
        REQUIRE(r.ok());
        return *r;
    }
};

std::size_t messages_to(const fakes::FakeTelegram& tg, const std::string& chat) {
    std::size_t n = 0;
    for (auto& m : tg.messages()) n += m.chat_id == chat;
    return n;
}

// The largest offset the gateway has confirmed to Telegram so far (0 = none).
std::int64_t confirmed_offset(const fakes::FakeTelegram& tg) {
    std::int64_t o = 0;
    for (auto& c : tg.get_updates_calls())
        if (c.contains("offset"))
            o = std::max<std::int64_t>(
                o, c["offset"].is_string() ? std::stoll(c["offset"].get<std::string>()) : c["offset"].get<std::int64_t>());
    return o;
}

}  // namespace

TEST_CASE("telegram polling: updates are stored once, strangers are recorded and refused once", "[integration][telegram]") {
    testing::Stack s("tg-poll");
    fakes::FakeTelegram tg;
    tg.push_update(text_update(10, kChat, "hello"));
    tg.push_update(text_update(11, kStranger, "let me in"));
    tg.push_update(text_update(12, kChat, "/help"));
    tg.push_update(text_update(13, kStranger, "please?"));
    tg.push_update({{"update_id", 14}, {"callback_query", {{"id", "cb"}}}});
    Gateway g(s, tg, {});

    REQUIRE(testing::eventually([&] { return confirmed_offset(tg) == 15; }, 15s));
    auto session = s.aggregate("session:telegram:" + kChat);
    REQUIRE(session.size() == 2);
    CHECK(session[0]["type"] == "MessageReceived");
    CHECK(session[0]["data"]["text"] == "hello");
    CHECK(session[1]["data"]["command"] == "/help");
    CHECK(s.count("MessageReceived") == 2);
    // The stranger: both messages recorded (without their text), one refusal, nothing for the assistant.
    auto denied = s.aggregate("access:telegram:" + kStranger);
    REQUIRE(denied.size() == 2);
    CHECK(denied[0]["type"] == "AccessDenied");
    CHECK(denied[0].dump().find("let me in") == std::string::npos);
    CHECK(s.aggregate("session:telegram:" + kStranger).empty());
    REQUIRE(testing::eventually([&] { return messages_to(tg, kStranger) == 1; }, 5s));
    CHECK(tg.messages()[0].text.find("private") != std::string::npos);
    CHECK(messages_to(tg, kChat) == 0);  // answering is the AI and notification processors' job
    CHECK(s.count_all() == 4);           // the callback query was ignored

    // The confirmations were lost (a crash before the next getUpdates): a new gateway process starts
    // without an offset and Telegram (a fresh fake that never saw those confirmations) delivers the
    // updates again. Still stored once, and no second refusal.
    g.app->stop();
    fakes::FakeTelegram tg2;
    tg2.push_update(text_update(10, kChat, "hello"));
    tg2.push_update(text_update(13, kStranger, "please?"));
    tg2.push_update(text_update(16, kChat, "new"));
    Gateway g2(s, tg2, {});
    REQUIRE(testing::eventually([&] { return confirmed_offset(tg2) == 17; }, 15s));
    CHECK(tg2.get_updates_calls()[0].contains("offset") == false);  // a new process starts without one
    CHECK(s.count("MessageReceived") == 3);
    CHECK(s.count("AccessDenied") == 2);
    std::this_thread::sleep_for(300ms);
    CHECK(tg2.message_count() == 0);
    auto m2 = g2.client->get("/metrics");
    REQUIRE(m2.ok());
    INFO(m2->body);
    CHECK(m2->body.find("engram_gateway_telegram_updates_total{outcome=\"duplicate\"} 2") != std::string::npos);
    CHECK(m2->body.find("engram_gateway_telegram_updates_total{outcome=\"stored\"} 1") != std::string::npos);
}

TEST_CASE("telegram: a store that answers anything but success or a final refusal gets the update retried, never acknowledged",
          "[integration][telegram]") {
    // The gateway's token does not match the store's: every append is a 401 (as a misconfiguration,
    // a 5xx or a proxy's 502 would be). Nothing may be acknowledged to Telegram meanwhile.
    testing::Stack s("tg-401", {{"ENGRAM_API_TOKEN", "store-token"}});
    fakes::FakeTelegram tg;
    tg.push_update(text_update(40, kChat, "are you there?"));
    Gateway g(s, tg, {{"ENGRAM_API_TOKEN", "another-token"}});
    REQUIRE(testing::eventually([&] { return tg.get_updates_calls().size() >= 1; }, 5s));
    std::this_thread::sleep_for(1500ms);
    CHECK(confirmed_offset(tg) == 0);           // update 40 not confirmed
    CHECK(tg.get_updates_calls().size() == 1);  // and not polled past
    CHECK(s.count_all() == 0);
}

TEST_CASE("telegram webhook: a store refusing the gateway's token means 503, so Telegram retries", "[integration][telegram]") {
    testing::Stack s("tg-401-hook", {{"ENGRAM_API_TOKEN", "store-token"}});
    fakes::FakeTelegram tg;
    Gateway g(s, tg, {{"ENGRAM_API_TOKEN", "another-token"}, {"TELEGRAM_WEBHOOK_SECRET", "hook-s3cret"}});
    auto r = g.post_update(text_update(41, kChat, "hi").dump(), "hook-s3cret");
    require_error(r, 503, "unavailable");
    CHECK(r.body.find("127.0.0.1") == std::string::npos);  // the store's address stays in the log
    CHECK(s.count_all() == 0);
}

TEST_CASE("telegram polling: the metrics count what happened", "[integration][telegram]") {
    testing::Stack s("tg-metrics");
    fakes::FakeTelegram tg;
    tg.push_update(text_update(10, kChat, "hello"));
    tg.push_update(text_update(12, kChat, "/help"));
    tg.push_update(text_update(16, kChat, "new"));
    tg.push_update({{"update_id", 17}, {"callback_query", {{"id", "cb"}}}});
    Gateway g(s, tg, {});
    REQUIRE(testing::eventually([&] { return confirmed_offset(tg) == 18; }, 15s));
    auto m = g.client->get("/metrics");
    REQUIRE(m.ok());
    CHECK(m->body.find("engram_gateway_telegram_updates_total{outcome=\"stored\"} 3") != std::string::npos);
    CHECK(m->body.find("engram_gateway_telegram_updates_total{outcome=\"duplicate\"} 0") != std::string::npos);
    CHECK(m->body.find("engram_gateway_telegram_updates_total{outcome=\"ignored\"} 1") != std::string::npos);
}

TEST_CASE("telegram polling: the offset moves only after the update is committed", "[integration][telegram]") {
    testing::Stack s("tg-offset");
    fakes::FakeTelegram tg;
    Gateway g(s, tg, {});
    tg.push_update(text_update(20, kChat, "first"));
    REQUIRE(testing::eventually([&] { return confirmed_offset(tg) == 21; }, 15s));

    s.kill_store();
    tg.push_update(text_update(21, kChat, "while the store is down"));
    // The gateway got update 21 but could not commit it: it keeps retrying and never confirms it.
    REQUIRE(testing::eventually(
        [&] {
            for (auto& c : tg.get_updates_calls())
                if (c.value("offset", json(0)) == 21) return true;
            return false;
        },
        10s));
    std::this_thread::sleep_for(2s);
    CHECK(confirmed_offset(tg) == 21);
    auto calls_while_down = tg.get_updates_calls().size();
    std::this_thread::sleep_for(1s);
    CHECK(tg.get_updates_calls().size() == calls_while_down);  // stuck on update 21, not polling past it

    s.start_store();
    REQUIRE(testing::eventually([&] { return confirmed_offset(tg) == 22; }, 20s));
    auto session = s.aggregate("session:telegram:" + kChat);
    REQUIRE(session.size() == 2);
    CHECK(session[1]["data"]["text"] == "while the store is down");
}

TEST_CASE("telegram polling: a 409 conflict is reported, not looped on", "[integration][telegram]") {
    testing::Stack s("tg-409");
    fakes::FakeTelegram tg;
    tg.set_conflict(true);
    Gateway g(s, tg, {});
    REQUIRE(testing::eventually([&] { return tg.get_updates_calls().size() >= 1; }, 5s));
    REQUIRE(testing::eventually(
        [&] {
            auto r = g.client->get("/readyz");
            return r.ok() && r->json()["checks"]["telegram"]["state"] == "conflict";
        },
        5s));
    std::this_thread::sleep_for(2s);
    CHECK(tg.get_updates_calls().size() == 1);  // the next try is a minute away
    auto m = g.client->get("/metrics");
    CHECK(m->body.find("engram_gateway_telegram_poll_conflicts_total 1") != std::string::npos);
    // Stopping does not wait for that minute.
    auto t0 = std::chrono::steady_clock::now();
    g.app->stop();
    CHECK(std::chrono::steady_clock::now() - t0 < 3s);
}

TEST_CASE("telegram webhook: checked, committed before 200, stored once, strangers refused once", "[integration][telegram]") {
    testing::Stack s("tg-hook");
    fakes::FakeTelegram tg;
    Gateway g(s, tg,
              {{"TELEGRAM_WEBHOOK_SECRET", "hook-s3cret"}, {"TELEGRAM_WEBHOOK_URL", "https://bot.example.org/telegram/webhook"}});
    // Registered with the secret at start; no polling in webhook mode.
    REQUIRE(testing::eventually([&] { return tg.webhook_calls().size() == 1; }, 5s));
    CHECK(tg.webhook_calls()[0]["allowed_updates"] == json::array({"message", "edited_message"}));
    CHECK(tg.webhook_calls()[0]["url"] == "https://bot.example.org/telegram/webhook");
    CHECK(tg.webhook_calls()[0]["secret_token"] == "hook-s3cret");

    const std::string good = text_update(30, kChat, "via webhook").dump();
    // Bad input: nothing stored.
    require_error(g.post_update(good, ""), 401, "unauthorized", "X-Telegram-Bot-Api-Secret-Token");
    require_error(g.post_update(good, "hook-s3cret-not"), 401, "unauthorized");
    require_error(g.post_update(good, "hook-s3cre"), 401, "unauthorized");
    require_error(g.post_update("{\"update_id\": 31, \"message\": ", "hook-s3cret"), 400, "invalid_json");
    require_error(g.post_update("[1,2]", "hook-s3cret"), 400, "invalid_request", "update_id");
    require_error(g.post_update(R"({"update_id":"31"})", "hook-s3cret"), 400, "invalid_request", "update_id");
    json big = text_update(32, kChat, std::string((1 << 20) + 10, 'x'));
    require_error(g.post_update(big.dump(), "hook-s3cret"), 413, "payload_too_large");
    CHECK(s.count_all() == 0);

    // The good one, twice: 200 both times (after commit), stored once.
    auto a = g.post_update(good, "hook-s3cret");
    CHECK(a.status == 200);
    CHECK(s.count("MessageReceived") == 1);  // committed before the answer
    auto b = g.post_update(good, "hook-s3cret");
    CHECK(b.status == 200);
    CHECK(s.count("MessageReceived") == 1);

    // A stranger: 200 (Telegram must not retry), recorded, one refusal for two messages.
    CHECK(g.post_update(text_update(33, kStranger, "hi").dump(), "hook-s3cret").status == 200);
    CHECK(g.post_update(text_update(34, kStranger, "hi again").dump(), "hook-s3cret").status == 200);
    CHECK(g.post_update(text_update(33, kStranger, "hi").dump(), "hook-s3cret").status == 200);
    CHECK(s.count("AccessDenied") == 2);
    CHECK(s.count("MessageReceived") == 1);
    CHECK(messages_to(tg, kStranger) == 1);
    // Unsupported kinds are acknowledged and ignored.
    CHECK(g.post_update(R"({"update_id":35,"my_chat_member":{}})", "hook-s3cret").status == 200);
    CHECK(s.count_all() == 3);

    // The store down: 503, so Telegram retries later; nothing half-done.
    s.kill_store();
    auto down = g.post_update(text_update(36, kChat, "later").dump(), "hook-s3cret");
    CHECK(down.status == 503);
    s.start_store();
    CHECK(g.post_update(text_update(36, kChat, "later").dump(), "hook-s3cret").status == 200);
    CHECK(s.count("MessageReceived") == 2);
    CHECK(tg.get_updates_calls().empty());
}

TEST_CASE("telegram: the webhook route is closed in polling mode and with Telegram off", "[integration][telegram]") {
    testing::Stack s("tg-closed");
    fakes::FakeTelegram tg;
    Gateway g(s, tg, {{"TELEGRAM_MODE", "off"}});
    require_error(g.post_update(text_update(1, kChat, "x").dump(), "anything"), 404, "not_found", "TELEGRAM_MODE=webhook");
    CHECK(s.count_all() == 0);
    CHECK(tg.get_updates_calls().empty());
}

TEST_CASE("telegram polling: kill -9 of the gateway at random moments loses and doubles nothing", "[integration][telegram]") {
    testing::Stack s("tg-kill");
    fakes::FakeTelegram tg;
    const int n = 120;
    for (int i = 1; i <= n; ++i) tg.push_update(text_update(100 + i, kChat, "message " + std::to_string(i)));
    std::map<std::string, std::string> env = {{"GATEWAY_LISTEN", "127.0.0.1:0"},
                                              {"TELEGRAM_BOT_TOKEN", tg.token()},
                                              {"TELEGRAM_API_BASE", tg.base_url()},
                                              {"TELEGRAM_ALLOWED_CHAT_IDS", kChat},
                                              {"TELEGRAM_POLL_TIMEOUT_S", "1"}};
    std::mt19937 rng(7);
    auto stored = [&] { return s.count("MessageReceived"); };
    for (int round = 0; round < 4 && stored() < n; ++round) {
        auto gw = s.start("interfaces/gateway/engram-gateway", env);
        auto before = stored();
        // Let it store a few, then kill it in the middle of its work.
        testing::eventually([&] { return stored() > before + 5; }, 10s);
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
        gw->kill9();
    }
    auto gw = s.start("interfaces/gateway/engram-gateway", env);
    REQUIRE(testing::eventually([&] { return confirmed_offset(tg) == 100 + n + 1; }, 60s));
    auto session = s.aggregate("session:telegram:" + kChat);
    REQUIRE(session.size() == static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) CHECK(session[i]["data"]["update_id"] == 100 + i + 1);  // each once, in order
    CHECK(stored() == n);
}
