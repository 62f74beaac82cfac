// The gateway's outgoing HTTP against servers that are not ours: Telegram long polling (getUpdates,
// and the one refusal by sendMessage) against Python's http.server, which frames answers like real
// servers (header alone, chunked, close-delimited); the store client and the web chat's event stream
// through nginx in front of the real event store.
#include "support.h"

#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <thread>

using namespace engram;
using namespace std::chrono_literals;
using gateway::test::require_error;
using nlohmann::json;

namespace {

const std::string kToken = "123456:py-fake-token";
const std::string kChat = "111";

json text_update(std::int64_t update_id, const std::string& chat, const std::string& text) {
    return {{"update_id", update_id},
            {"message",
             {{"message_id", update_id + 1000},
              {"date", 1800000000},
              {"chat", {{"id", std::stoll(chat)}, {"type", "private"}}},
              {"from", {{"id", std::stoll(chat)}, {"is_bot", false}, {"first_name", "T"}}},
              {"text", text}}}};
}

// A browser of the web chat: its cookie from GET /.
std::string new_session(http::Client& gw) {
    auto r = gw.get("/");
    REQUIRE(r.ok());
    REQUIRE(r->status == 200);
    auto sc = r->header("set-cookie");
    REQUIRE(sc.rfind("engram_chat=", 0) == 0);
    return sc.substr(12, sc.find(';') - 12);
}

http::ClientResponse say(http::Client& gw, const std::string& cookie, const std::string& id, const std::string& text) {
    auto r = gw.request("POST", "/chat/messages", json{{"id", id}, {"text", text}}.dump(),
                        {{"Content-Type", "application/json"}, {"Cookie", "engram_chat=" + cookie}});
    REQUIRE(r.ok());
    return *r;
}

}  // namespace

TEST_CASE("gateway: Telegram long polling against Python's http.server, appends through nginx, 200 updates without a failure",
          "[integration][gateway][telegram]") {
    testing::Stack s("gw-real");
    testing::Nginx nginx(s.url());
    const std::string bot = "/bot" + kToken;
    testing::PyHttpFake tg(json::array({
        // An empty long poll that ends at once (the test's updates are queued below).
        {{"method", "POST"},
         {"path", bot + "/getUpdates"},
         {"json", {{"ok", true}, {"result", json::array()}}},
         {"mode", "cycle"},
         {"wait_ms", 50}},
        {{"method", "POST"},
         {"path", bot + "/sendMessage"},
         {"json", {{"ok", true}, {"result", {{"message_id", 1}, {"date", 1800000000}}}}},
         {"mode", "split"}},
    }));
    // 200 answers of getUpdates, one update each, in every framing in turn. The fake forgets an
    // answer once it has sent it: an answer the client failed to read loses its update for good.
    const int total = 200;
    for (int i = 1; i <= total; ++i) {
        auto u = i == 100 ? text_update(i, "333", "a stranger") : text_update(i, kChat, "message " + std::to_string(i));
        tg.push({{"method", "POST"},
                 {"path", bot + "/getUpdates"},
                 {"json", {{"ok", true}, {"result", {u}}}},
                 {"mode", "cycle"},
                 {"delay_ms", 2}});
    }
    gateway::test::InProcess gw(s, {{"TELEGRAM_BOT_TOKEN", kToken},
                                    {"TELEGRAM_API_BASE", tg.url()},
                                    {"TELEGRAM_ALLOWED_CHAT_IDS", kChat},
                                    {"TELEGRAM_POLL_TIMEOUT_S", "1"},
                                    {"EVENT_STORE_URL", nginx.url()}});
    REQUIRE(testing::eventually([&] { return s.count("MessageReceived") + s.count("AccessDenied") == total; }, 60s));
    CHECK(s.count("MessageReceived") == total - 1);
    CHECK(s.count("AccessDenied") == 1);
    auto session = s.aggregate("session:telegram:" + kChat);
    REQUIRE(session.size() == static_cast<std::size_t>(total - 1));
    CHECK(session.front()["data"]["text"] == "message 1");
    CHECK(session.back()["data"]["text"] == "message 200");

    // Every update was confirmed in turn: offsets 2..201 each asked for, none skipped or repeated.
    REQUIRE(testing::eventually([&] {
        for (const auto& r : tg.requests())
            if (r["path"] == bot + "/getUpdates" && json::parse(r["body"].get<std::string>()).value("offset", 0) == total + 1)
                return true;
        return false;
    }));
    std::vector<std::int64_t> offsets;
    std::size_t refusals = 0;
    for (const auto& r : tg.requests()) {
        if (r["path"] == bot + "/sendMessage") ++refusals;
        if (r["path"] != bot + "/getUpdates") continue;
        auto o = json::parse(r["body"].get<std::string>()).value("offset", std::int64_t{0});
        if (offsets.empty() || offsets.back() != o) offsets.push_back(o);
    }
    REQUIRE(offsets.size() == static_cast<std::size_t>(total + 1));  // none, then 2..201
    for (int i = 1; i <= total; ++i) CHECK(offsets[i] == i + 1);
    CHECK(refusals == 1);
    auto m = gw.client->get("/metrics");
    REQUIRE(m.ok());
    CHECK(m->body.find("engram_gateway_telegram_updates_total{outcome=\"stored\"} 199") != std::string::npos);
    // Each append went through nginx and was committed.
    INFO(nginx.error_log());
    CHECK(testing::eventually([&] { return nginx.count("201 \"POST /events HTTP/1.1\" upstream=201") == std::size_t(total); }));
    auto ready = gw.client->get("/readyz");
    REQUIRE(ready.ok());
    CHECK(ready->json()["checks"]["telegram"]["state"] == "ok");
}

TEST_CASE("web chat through nginx: messages appended and the browser's event stream, live", "[integration][gateway][webchat]") {
    testing::Stack s("gw-nginx");
    testing::Nginx nginx(s.url());
    // 50 messages in a row from one browser: above the web chat's rate limits, which have their own tests.
    gateway::test::InProcess gw(s, {{"WEBCHAT_SECRET", "a-test-secret-of-enough-length"},
                                    {"EVENT_STORE_URL", nginx.url()},
                                    {"WEBCHAT_SESSION_MESSAGES_PER_MINUTE", "6000"},
                                    {"WEBCHAT_ADDRESS_MESSAGES_PER_MINUTE", "0"}});
    auto cookie = new_session(*gw.client);
    const int total = 50;
    for (int i = 0; i < total; ++i)
        REQUIRE(say(*gw.client, cookie, "m" + std::to_string(i), "hello " + std::to_string(i)).status == 201);

    std::thread later([&] {
        std::this_thread::sleep_for(300ms);  // the stream is live by then (it also catches up if not)
        http::Client c(gw.app->url());
        (void)c.request("POST", "/chat/messages", R"({"id":"live","text":"live one"})",
                        {{"Content-Type", "application/json"}, {"Cookie", "engram_chat=" + cookie}});
    });
    http::Client browser(gw.app->url());
    std::vector<std::string> texts;
    auto r = browser.sse(
        "/chat/events", {{"Cookie", "engram_chat=" + cookie}},
        [&](const std::string&, const std::string&, const std::string& data) {
            texts.push_back(json::parse(data)["data"].value("text", ""));
            return texts.back() != "live one";
        },
        10s);
    later.join();
    REQUIRE(r.ok());
    CHECK(*r == 200);
    REQUIRE(texts.size() == static_cast<std::size_t>(total + 1));
    CHECK(texts.front() == "hello 0");
    CHECK(texts[total - 1] == "hello 49");
    CHECK(testing::eventually([&] { return nginx.count("\"POST /events HTTP/1.1\" upstream=201") == std::size_t(total + 1); }));
}

TEST_CASE("web chat: the store's per-client cap on streams reaches the browser as 503, and the next one opens",
          "[integration][gateway][webchat]") {
    testing::Stack s("gw-cap", {{"EVENT_STORE_SSE_MAX_PER_CLIENT", "1"}});
    gateway::test::InProcess gw(s, {{"WEBCHAT_SECRET", "a-test-secret-of-enough-length"}});
    auto cookie = new_session(*gw.client);

    // The first browser stream, held open on a raw socket: the store's first frame has come through.
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(gw.app->port());
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    std::string req = "GET /chat/events HTTP/1.1\r\nHost: localhost\r\nCookie: engram_chat=" + cookie + "\r\n\r\n";
    REQUIRE(::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string got;
    char buf[4096];
    while (got.find("retry: 1000") == std::string::npos) {
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        got.append(buf, static_cast<std::size_t>(n));
    }
    REQUIRE(got.rfind("HTTP/1.1 200", 0) == 0);

    // The second, from the same gateway address: the store says 429, the browser gets a clear 503.
    auto second = gw.client->get("/chat/events", {{"Cookie", "engram_chat=" + cookie}});
    REQUIRE(second.ok());
    require_error(*second, 503, "unavailable", "HTTP 429");

    ::close(fd);  // the first browser leaves: its upstream stream ends, the place is free again
    REQUIRE(say(*gw.client, cookie, "after", "hi").status == 201);
    REQUIRE(testing::eventually([&] {
        http::Client c(gw.app->url());
        int events = 0;
        auto r = c.sse(
            "/chat/events", {{"Cookie", "engram_chat=" + cookie}}, [&](auto&, auto&, auto&) { return ++events < 1; }, 5s);
        return r.ok() && *r == 200 && events == 1;
    }));
}
