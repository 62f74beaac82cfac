// The notification processor's outgoing HTTP against servers that are not ours: Telegram's
// sendMessage and a Slack webhook answered by Python's http.server in every framing (header alone,
// chunked, close-delimited), and its store client (the processor runtime) through nginx in front of
// the real event store. A misread answer would show: a send whose answer is lost is never retried
// (it may have been delivered) but recorded as NotificationFailed.
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

using namespace engram;
using nlohmann::json;
using namespace std::chrono_literals;

TEST_CASE("notification: 100 Telegram messages and 100 Slack posts to Python's http.server, the store through nginx",
          "[integration][notification]") {
    testing::Stack s("notif-real");
    testing::Nginx nginx(s.url());
    const std::string token = "123456:py-fake-token";
    testing::PyHttpFake fake(json::array({
        {{"method", "POST"},
         {"path", "/bot" + token + "/sendMessage"},
         {"json", {{"ok", true}, {"result", {{"message_id", 77}, {"date", 1800000000}, {"chat", {{"id", 1}}}}}}},
         {"mode", "cycle"},
         {"delay_ms", 2}},
        {{"method", "POST"},
         {"path", "/services/T0/B0/secret"},
         {"body", "ok"},
         {"headers", {{"Content-Type", "text/html"}}},
         {"mode", "cycle"},
         {"delay_ms", 2}},
    }));
    auto proc = s.start("notification-processor/engram-notification-processor",
                        {{"EVENT_STORE_URL", nginx.url()},
                         {"NOTIFICATION_PROCESSOR_LISTEN", "127.0.0.1:0"},
                         {"TELEGRAM_BOT_TOKEN", token},
                         {"TELEGRAM_API_BASE", fake.url()},
                         {"TELEGRAM_ALLOWED_CHAT_IDS", "*"},  // every chat here; the list has its own tests
                         {"SLACK_WEBHOOK_URL", fake.url() + "/services/T0/B0/secret"}});

    const int n = 100;
    http::Client store(s.url());
    for (int i = 0; i < n; ++i) {
        // One chat per message: the per-chat pacing of Telegram deliveries stays out of the way.
        for (auto [session, channel] :
             {std::pair<std::string, std::string>{"session:telegram:" + std::to_string(1000 + i), "telegram"},
              {"session:slack:C" + std::to_string(i), "slack"}}) {
            auto r = store.post_json("/events", {{"id", Uuid::v4().str()},
                                                 {"type", "MessageGenerated"},
                                                 {"aggregate_id", session},
                                                 {"data", {{"text", "note " + std::to_string(i)}, {"channel", channel}}}});
            REQUIRE(r.ok());
            REQUIRE(r->status == 201);
        }
    }
    bool done = testing::eventually([&] { return s.count("TelegramMessageSent") + s.count("SlackMessageSent") == 2 * n; }, 120s);
    INFO(testing::tail_file(proc->log_path()));
    REQUIRE(done);
    CHECK(s.count("TelegramMessageSent") == n);
    CHECK(s.count("SlackMessageSent") == n);
    CHECK(s.count("NotificationFailed") == 0);
    std::size_t telegram = 0, slack = 0;
    for (const auto& r : fake.requests()) {
        telegram += r["path"] == "/bot" + token + "/sendMessage";
        slack += r["path"] == "/services/T0/B0/secret";
    }
    CHECK(telegram == static_cast<std::size_t>(n));  // each sent once, none retried
    CHECK(slack == static_cast<std::size_t>(n));
    // The processor recorded every delivery through nginx.
    CHECK(testing::eventually([&] { return nginx.count("201 \"POST /events HTTP/1.1\" upstream=201") == std::size_t(2 * n); }));
}
