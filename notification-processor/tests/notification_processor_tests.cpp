// The notification processor binary against the real event store binary, PostgreSQL, nats-server and
// fake Telegram / Slack servers (and a local aiosmtpd for email when installed).
#include "notification_processor.h"

#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/testing/testing.h"
#include "fake_slack.h"
#include "fake_telegram.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <filesystem>
#include <thread>

using namespace engram;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Stack : testing::Stack {
    http::Client client{url()};
    fakes::FakeTelegram telegram;
    fakes::FakeSlack slack;
    std::map<std::string, std::string> extra_env;
    std::unique_ptr<testing::Process> proc;
    int starts = 0;

    Stack() : testing::Stack("notifproc") {}

    void start_processor() {
        std::map<std::string, std::string> env = {{"DATABASE_URL", db()},
                                                  {"NATS_URL", nats().url()},
                                                  {"EVENT_STORE_URL", url()},
                                                  {"LOG_LEVEL", "info"},
                                                  {"NOTIFICATION_PROCESSOR_LISTEN", "127.0.0.1:0"},
                                                  {"NOTIFICATION_PROCESSOR_LEASE_TTL_MS", "3000"},
                                                  {"TELEGRAM_BOT_TOKEN", telegram.token()},
                                                  {"TELEGRAM_API_BASE", telegram.base_url()},
                                                  // the chats the tests deliver to; 666 is never one of them
                                                  {"TELEGRAM_ALLOWED_CHAT_IDS", "4242,77,9,1,555,88"},
                                                  {"SLACK_WEBHOOK_URL", slack.url()}};
        for (auto& [k, v] : extra_env) env[k] = v;
        proc = std::make_unique<testing::Process>(
            std::vector<std::string>{testing::build_dir() + "/notification-processor/engram-notification-processor"}, env,
            dir() + "/proc-" + std::to_string(++starts) + ".log");
        // ready when the table exists (migrated before the runtime starts)
        REQUIRE(testing::eventually(
            [&] {
                try {
                    pqxx::connection c(db());
                    pqxx::nontransaction tx(c);
                    return !tx.exec("SELECT 1 FROM pg_tables WHERE tablename = 'notification_deliveries'").empty();
                } catch (...) {
                    return false;
                }
            },
            std::chrono::seconds(20)));
    }

    // Appends a MessageGenerated; returns its id.
    std::string say(const std::string& session, const std::string& channel, const std::string& text, json extra = json::object(),
                    std::string id = "") {
        if (id.empty()) id = Uuid::v4().str();
        json data = {{"text", text}, {"channel", channel}};
        for (auto& [k, v] : extra.items()) data[k] = v;
        auto r =
            client.post_json("/events", {{"id", id}, {"type", "MessageGenerated"}, {"aggregate_id", session}, {"data", data}});
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
        return id;
    }

    // Events of `type` caused by `source` (their data), in log order.
    std::vector<json> caused(const std::string& source, const std::string& type) {
        pqxx::connection c(db());
        pqxx::nontransaction tx(c);
        std::vector<json> out;
        for (const auto& row :
             tx.exec_params("SELECT data::text FROM events WHERE type = $1 AND metadata->>'causation_id' = $2 ORDER BY position",
                            type, source))
            out.push_back(json::parse(row[0].as<std::string>()));
        return out;
    }
    std::vector<json> wait_for(const std::string& source, const std::string& type, std::chrono::milliseconds t = 20s) {
        std::vector<json> v;
        testing::eventually(
            [&] {
                v = caused(source, type);
                return !v.empty();
            },
            t);
        INFO("processor log:\n" << (proc ? testing::tail_file(proc->log_path()) : ""));
        REQUIRE(!v.empty());
        return v;
    }
    std::string delivery_status(const std::string& source, int part) {
        pqxx::connection c(db());
        pqxx::nontransaction tx(c);
        auto r =
            tx.exec_params("SELECT status FROM notification_deliveries WHERE source_event_id = $1 AND part = $2", source, part);
        return r.empty() ? "" : r[0][0].as<std::string>();
    }
};

std::string paragraphs(std::size_t total, char fill) {
    // paragraphs of ~900 characters made of words and sentences
    std::string out;
    int n = 0;
    while (out.size() < total) {
        std::string p;
        while (p.size() < 880) {
            ++n;
            p += std::string(1, fill) + "word" + std::to_string(n) + (n % 10 == 0 ? ". " : " ");
        }
        p.pop_back();
        out += (out.empty() ? "" : "\n\n") + p;
    }
    return out.substr(0, total);
}

}  // namespace

TEST_CASE("a MessageGenerated on a telegram session becomes exactly one sendMessage and one TelegramMessageSent",
          "[integration][notification]") {
    Stack s;
    s.start_processor();
    auto id = s.say("session:telegram:4242", "telegram", "Hello from engram!");
    auto sent = s.wait_for(id, "TelegramMessageSent");
    std::this_thread::sleep_for(500ms);  // nothing more arrives
    auto msgs = s.telegram.messages();
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].chat_id == "4242");
    CHECK(msgs[0].text == "Hello from engram!");
    REQUIRE(s.caused(id, "TelegramMessageSent").size() == 1);
    CHECK(sent[0]["message_ids"] == json::array({msgs[0].message_id}));
    CHECK(sent[0]["chat_id"] == 4242);
    CHECK(sent[0]["parts"] == 1);
    CHECK(sent[0]["source_event_id"] == id);
    CHECK(s.delivery_status(id, 0) == "sent");
    // web: nothing to deliver, no event
    auto web = s.say("session:web:abc", "web", "for the browser");
    std::this_thread::sleep_for(1s);
    CHECK(s.caused(web, "NotificationFailed").empty());
    CHECK(s.telegram.message_count() == 1);
}

TEST_CASE("a 6000-character text arrives as two messages in order, split on a paragraph boundary",
          "[integration][notification]") {
    Stack s;
    s.start_processor();
    std::string text = paragraphs(6000, 'q');
    auto id = s.say("session:telegram:77", "telegram", text, {{"reply_to", 5}});
    auto sent = s.wait_for(id, "TelegramMessageSent");
    auto msgs = s.telegram.messages();
    REQUIRE(msgs.size() == 2);
    CHECK(msgs[0].text.size() <= 4096);
    CHECK(msgs[0].text + "\n\n" + msgs[1].text == text);  // cut exactly at a paragraph break
    CHECK(msgs[0].request["reply_to_message_id"] == 5);
    CHECK(!msgs[1].request.contains("reply_to_message_id"));
    CHECK(sent[0]["message_ids"] == json::array({msgs[0].message_id, msgs[1].message_id}));
    CHECK(sent[0]["parts"] == 2);
}

TEST_CASE("a 429 with retry_after delays and then delivers once", "[integration][notification]") {
    Stack s;
    s.start_processor();
    s.telegram.push_429(2);
    auto t0 = std::chrono::steady_clock::now();
    auto id = s.say("session:telegram:9", "telegram", "after the wait");
    auto sent = s.wait_for(id, "TelegramMessageSent");
    auto msgs = s.telegram.messages();
    REQUIRE(msgs.size() == 1);
    CHECK(s.telegram.send_calls() == 2);
    CHECK(std::chrono::steady_clock::now() - t0 >= 2s);
    CHECK(sent[0]["attempts"] == 2);
    CHECK(s.caused(id, "NotificationFailed").empty());
}

TEST_CASE("a 400 from Telegram is NotificationFailed at once, without retries", "[integration][notification]") {
    Stack s;
    s.start_processor();
    s.telegram.push_error(400, "Bad Request: chat not found");
    auto id = s.say("session:telegram:1", "telegram", "to nowhere");
    auto failed = s.wait_for(id, "NotificationFailed");
    std::this_thread::sleep_for(1500ms);
    CHECK(s.telegram.send_calls() == 1);
    CHECK(s.telegram.message_count() == 0);
    REQUIRE(s.caused(id, "NotificationFailed").size() == 1);
    CHECK(failed[0]["reason"] == "rejected");
    CHECK(failed[0]["http_status"] == 400);
    CHECK(failed[0]["attempts"] == 1);
    CHECK(failed[0]["channel"] == "telegram");
    CHECK(failed[0]["detail"].get<std::string>().find("chat not found") != std::string::npos);
    CHECK(s.caused(id, "TelegramMessageSent").empty());
    // the processor still works afterwards
    auto ok = s.say("session:telegram:1", "telegram", "now fine");
    s.wait_for(ok, "TelegramMessageSent");
}

TEST_CASE("a chat outside TELEGRAM_ALLOWED_CHAT_IDS is sent nothing, whoever wrote the event", "[integration][notification]") {
    Stack s;
    s.start_processor();
    // A session of a chat that never passed the gateway's list, and a chat named in the data of an
    // allowed session's message.
    auto stranger = s.say("session:telegram:666", "telegram", "your secrets");
    auto redirected = s.say("session:telegram:4242", "telegram", "your secrets", {{"chat_id", 666}});
    auto padded = s.say("session:telegram:0666", "telegram", "your secrets");
    for (const auto& id : {stranger, redirected, padded}) {
        auto failed = s.wait_for(id, "NotificationFailed");
        REQUIRE(failed.size() == 1);
        CHECK(failed[0]["reason"] == "chat_not_allowed");
        CHECK(failed[0]["channel"] == "telegram");
        CHECK(failed[0]["attempts"] == 0);
        CHECK(failed[0]["retryable"] == false);
        CHECK(failed[0]["detail"].get<std::string>().find("TELEGRAM_ALLOWED_CHAT_IDS") != std::string::npos);
        CHECK(s.caused(id, "TelegramMessageSent").empty());
        CHECK(s.delivery_status(id, 0).empty());  // not even an attempt was recorded
    }
    CHECK(s.telegram.send_calls() == 0);
    // An allowed chat is still delivered to.
    auto ok = s.say("session:telegram:4242", "telegram", "for you");
    s.wait_for(ok, "TelegramMessageSent");
    CHECK(s.telegram.send_calls() == 1);
    REQUIRE(s.telegram.messages().size() == 1);
    CHECK(s.telegram.messages()[0].chat_id == "4242");
}

TEST_CASE("an empty TELEGRAM_ALLOWED_CHAT_IDS means no chat as in the gateway, and * means every chat",
          "[integration][notification]") {
    Stack s;
    s.extra_env["TELEGRAM_ALLOWED_CHAT_IDS"] = "";
    s.start_processor();
    auto none = s.say("session:telegram:4242", "telegram", "hello");
    CHECK(s.wait_for(none, "NotificationFailed")[0]["reason"] == "chat_not_allowed");
    CHECK(s.telegram.send_calls() == 0);
    s.proc.reset();
    s.extra_env["TELEGRAM_ALLOWED_CHAT_IDS"] = "*";
    s.start_processor();
    auto any = s.say("session:telegram:31337", "telegram", "hello");
    s.wait_for(any, "TelegramMessageSent");
    CHECK(s.telegram.send_calls() == 1);
}

TEST_CASE("kill -9 during a send: the message is delivered at most once and no TelegramMessageSent is duplicated",
          "[integration][notification][fault]") {
    Stack s;
    s.start_processor();
    s.telegram.delay_next(2s);
    auto id = s.say("session:telegram:555", "telegram", "sent while crashing");
    REQUIRE(testing::eventually([&] { return s.telegram.message_count() == 1; }, 20s));
    s.proc->kill9();  // the fake holds its answer: the outcome is unknown to the processor
    CHECK(s.delivery_status(id, 0) == "sending");
    s.start_processor();
    auto failed = s.wait_for(id, "NotificationFailed", 30s);
    CHECK(failed[0]["reason"] == "unknown_outcome");
    CHECK(failed[0]["retryable"] == false);
    std::this_thread::sleep_for(1s);
    CHECK(s.telegram.message_count() == 1);  // at most once
    CHECK(s.caused(id, "TelegramMessageSent").empty());
    CHECK(s.caused(id, "NotificationFailed").size() == 1);
    CHECK(s.delivery_status(id, 0) == "failed");
    // Later messages flow normally.
    auto next = s.say("session:telegram:555", "telegram", "next one");
    s.wait_for(next, "TelegramMessageSent");
    CHECK(s.telegram.message_count() == 2);
    pqxx::connection c(s.db());
    pqxx::nontransaction tx(c);
    CHECK(
        tx.exec("SELECT metadata->>'causation_id' FROM events WHERE type = 'TelegramMessageSent' GROUP BY 1 HAVING count(*) > 1")
            .empty());
}

TEST_CASE("a lease taken over during a send: the old owner records nothing and sends no further part",
          "[integration][notification][fencing]") {
    Stack s;
    s.start_processor();
    const std::string session = "session:telegram:88";
    const int partition = events::partition_of(session, events::kDefaultPartitions);
    auto db = [&](const std::string& sql) {
        pqxx::connection c(s.db());
        pqxx::work tx(c);
        auto r = tx.exec(sql);
        tx.commit();
        return r;
    };
    s.telegram.delay_next(3s);
    auto id = s.say(session, "telegram", paragraphs(6000, 'f'));  // two parts
    REQUIRE(testing::eventually([&] { return s.telegram.message_count() == 1; }, 20s));
    // Part 0 is on its way (the fake holds the answer): another instance takes the partition now.
    auto taken =
        db("UPDATE processor_leases SET owner = gen_random_uuid(), epoch = epoch + 1, expires_at = now() + interval '1 hour' "
           "WHERE processor = 'notification-processor' AND partition = " +
           std::to_string(partition) + " RETURNING epoch");
    REQUIRE(taken.size() == 1);
    std::this_thread::sleep_for(4s);  // the answer came; its record is fenced
    INFO(testing::tail_file(s.proc->log_path()));
    CHECK(s.delivery_status(id, 0) == "sending");
    CHECK(s.delivery_status(id, 1).empty());
    CHECK(s.telegram.message_count() == 1);
    CHECK(s.caused(id, "TelegramMessageSent").empty());

    // The next owner (this instance again, once the lease is free) finds part 0 of unknown outcome:
    // at most once, nothing is resent.
    db("UPDATE processor_leases SET owner = NULL, expires_at = now() WHERE processor = 'notification-processor' AND "
       "partition = " +
       std::to_string(partition));
    auto failed = s.wait_for(id, "NotificationFailed", 30s);
    CHECK(failed[0]["reason"] == "unknown_outcome");
    CHECK(failed[0]["parts_sent"] == 0);
    CHECK(s.telegram.message_count() == 1);
    CHECK(s.caused(id, "TelegramMessageSent").empty());
}

TEST_CASE("redelivery after parts were recorded sent resends only the missing parts", "[integration][notification]") {
    Stack s;
    s.start_processor();
    std::string id = Uuid::v4().str();
    {
        // as if a previous run sent part 0 (message 31337) and crashed before part 1
        pqxx::connection c(s.db());
        pqxx::work tx(c);
        tx.exec_params(
            "INSERT INTO notification_deliveries (source_event_id, part, channel, status, telegram_message_id, attempts) "
            "VALUES ($1, 0, 'telegram', 'sent', 31337, 1)",
            id);
        tx.commit();
    }
    std::string text = paragraphs(6000, 'r');
    s.say("session:telegram:88", "telegram", text, {}, id);
    auto sent = s.wait_for(id, "TelegramMessageSent");
    auto msgs = s.telegram.messages();
    REQUIRE(msgs.size() == 1);
    CHECK(text.size() > msgs[0].text.size());
    CHECK(text.substr(text.size() - msgs[0].text.size()) == msgs[0].text);  // the second part only
    CHECK(sent[0]["message_ids"] == json::array({31337, msgs[0].message_id}));
}

TEST_CASE("Slack webhook delivery, and a 4xx from Slack fails at once", "[integration][notification]") {
    Stack s;
    s.start_processor();
    auto id = s.say("session:slack:C123", "slack", "hello slack");
    auto sent = s.wait_for(id, "SlackMessageSent");
    REQUIRE(s.slack.post_count() == 1);
    CHECK(s.slack.posts()[0]["text"] == "hello slack");
    CHECK(sent[0]["parts"] == 1);
    CHECK(sent[0]["webhook_host"] == "127.0.0.1:" + std::to_string(s.slack.port()));
    s.slack.push_status(403, "action_prohibited");
    auto bad = s.say("session:slack:C123", "slack", "refused");
    auto failed = s.wait_for(bad, "NotificationFailed");
    CHECK(failed[0]["reason"] == "rejected");
    CHECK(failed[0]["http_status"] == 403);
    std::this_thread::sleep_for(1s);
    CHECK(s.slack.attempts().size() == 2);
}

TEST_CASE("email over SMTP to a local aiosmtpd", "[integration][notification][email]") {
    if (!std::filesystem::exists("/usr/bin/python3") ||
        std::system("/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1") != 0) {
        WARN("python3-aiosmtpd is not installed: email delivery not tested (apt-get install -y python3-aiosmtpd)");
        return;
    }
    Stack s;
    int smtp_port = testing::free_port();
    testing::Process smtpd({"/usr/bin/python3", "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:" + std::to_string(smtp_port)},
                           {{"PYTHONUNBUFFERED", "1"}}, s.dir() + "/smtpd.log");
    const std::string probe = "bash -c 'echo > /dev/tcp/127.0.0.1/" + std::to_string(smtp_port) + "' 2>/dev/null";
    REQUIRE(testing::eventually([&] { return std::system(probe.c_str()) == 0; }, 10s));
    s.extra_env = {{"SMTP_URL", "smtp://127.0.0.1:" + std::to_string(smtp_port)}, {"EMAIL_FROM", "engram@example.org"}};
    s.start_processor();
    auto id =
        s.say("session:email:alice@example.org", "email", "Dear Alice,\n.\nYour reminder. Grüße", {{"subject", "Reminder ✓"}});
    auto sent = s.wait_for(id, "EmailSent");
    CHECK(sent[0]["to"] == json::array({"alice@example.org"}));
    CHECK(sent[0]["subject"] == "Reminder ✓");
    CHECK(sent[0]["from"] == "engram@example.org");
    REQUIRE(testing::eventually([&] { return smtpd.log().find("Your reminder.") != std::string::npos; }, 10s));
    auto log = smtpd.log();
    CHECK(log.find("alice@example.org") != std::string::npos);
    CHECK(log.find("<" + id + "@engram>") != std::string::npos);
    CHECK(s.caused(id, "EmailSent").size() == 1);
}
