// The whole stack as users run it — the store, the memory, AI and notification processors and the
// gateway, each its own binary, on a real PostgreSQL and nats-server — with fakes only for Telegram
// and the model: a Telegram message becomes exactly one reply, whatever is redelivered on the way.
#include "engram/core/time.h"
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/testing/testing.h"
#include "fake_openai.h"
#include "fake_telegram.h"
#include "signature.h"

#include "engram/events/event.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <tuple>
#include <thread>

using namespace engram;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

const std::string kChat = "4242";

json text_update(std::int64_t update_id, const std::string& chat, const std::string& text) {
    return {{"update_id", update_id},
            {"message",
             {{"message_id", 500 + update_id},
              {"date", 1800000000},
              {"chat", {{"id", std::stoll(chat)}, {"type", "private"}}},
              {"from", {{"id", std::stoll(chat)}, {"is_bot", false}, {"first_name", "E2E"}}},
              {"text", text}}}};
}

// A paragraph-structured answer of about n characters.
std::string long_answer(std::size_t n) {
    std::string out;
    for (int p = 1; out.size() < n; ++p) {
        std::string para = "Paragraph " + std::to_string(p) + ".";
        while (para.size() < 380) para += " The quick brown fox jumps over the lazy dog.";
        out += (out.empty() ? "" : "\n\n") + para;
    }
    return out;
}

struct WholeStack {
    testing::Stack s{"e2e"};
    fakes::FakeOpenAI llm;
    fakes::FakeTelegram tg;
    int gw_port = testing::free_port();
    // Two instances of every processor, sharing the partitions, as a deployment would run them.
    std::unique_ptr<testing::Process> memory, ai, notify, memory2, ai2, notify2, gw;

    explicit WholeStack(std::map<std::string, std::string> gateway_env = {}) {
        // "slow please" is answered after 4 s (a run to kill in the middle).
        llm.on(
            [](const json& req) {
                return req["messages"].back()["role"] == "user" &&
                       fakes::FakeOpenAI::last_user_message(req).find("slow please") != std::string::npos;
            },
            [](const json& req) {
                return fakes::FakeOpenAI::tool_calls_body(
                    {{"call_send", "send_message", {{"text", "Echo: " + fakes::FakeOpenAI::last_user_message(req)}}}});
            },
            4000ms);
        // The model: answers a user's message with send_message, then ends the run with task_complete.
        llm.on([](const json& req) { return req["messages"].back()["role"] == "tool"; },
               [](const json&) {
                   return fakes::FakeOpenAI::tool_calls_body({{"call_done", "task_complete", {{"summary", "answered"}}}});
               });
        // "remind me …": the schedule tool, three seconds ahead.
        llm.on(
            [](const json& req) {
                return req["messages"].back()["role"] == "user" &&
                       fakes::FakeOpenAI::last_user_message(req).rfind("remind me", 0) == 0;
            },
            [](const json&) {
                return fakes::FakeOpenAI::tool_calls_body(
                    {{"call_schedule", "schedule", {{"text", "stretch"}, {"in_minutes", 0.05}}}});
            });
        llm.on([](const json&) { return true; },
               [](const json& req) {
                   auto text = fakes::FakeOpenAI::last_user_message(req);
                   std::string answer = text.find("long please") != std::string::npos ? long_answer(6000) : "Echo: " + text;
                   return fakes::FakeOpenAI::tool_calls_body({{"call_send", "send_message", {{"text", answer}}}});
               });
        auto start_processors = [&] {
            auto m = s.start("memory-processor/engram-memory-processor",
                             {{"MEMORY_PROCESSOR_LISTEN", "127.0.0.1:0"}, {"MEMORY_PROCESSOR_LEASE_TTL_MS", "2000"}});
            auto a = s.start("ai-processor/engram-ai-processor", {{"AI_PROCESSOR_LISTEN", "127.0.0.1:0"},
                                                                  {"AI_PROCESSOR_LEASE_TTL_MS", "2000"},
                                                                  {"LLM_BASE_URL", llm.base_url()},
                                                                  {"LLM_MAX_RETRIES", "2"}});
            auto n =
                s.start("notification-processor/engram-notification-processor", {{"NOTIFICATION_PROCESSOR_LISTEN", "127.0.0.1:0"},
                                                                                 {"NOTIFICATION_PROCESSOR_LEASE_TTL_MS", "2000"},
                                                                                 {"TELEGRAM_BOT_TOKEN", tg.token()},
                                                                                 {"TELEGRAM_API_BASE", tg.base_url()},
                                                                                 {"TELEGRAM_ALLOWED_CHAT_IDS", kChat}});
            return std::make_tuple(std::move(m), std::move(a), std::move(n));
        };
        std::tie(memory, ai, notify) = start_processors();
        std::tie(memory2, ai2, notify2) = start_processors();
        // The tests are about answers, not rebalancing: let the two instances settle on their shares
        // first (a hand-over in the middle of a Telegram retry_after wait would cut the wait short).
        REQUIRE(testing::eventually(
            [&] {
                try {
                    pqxx::connection c(s.db());
                    pqxx::nontransaction tx(c);
                    auto r = tx.exec(
                        "SELECT count(*) FROM (SELECT processor FROM processor_leases WHERE owner IS NOT NULL AND "
                        "expires_at > now() GROUP BY processor HAVING count(*) = 16 AND count(DISTINCT owner) = 2) settled");
                    return r[0][0].as<int>() == 3;
                } catch (const std::exception&) {
                    return false;
                }
            },
            30s));
        std::map<std::string, std::string> env = {{"GATEWAY_LISTEN", "127.0.0.1:" + std::to_string(gw_port)},
                                                  {"TELEGRAM_BOT_TOKEN", tg.token()},
                                                  {"TELEGRAM_API_BASE", tg.base_url()},
                                                  {"TELEGRAM_ALLOWED_CHAT_IDS", kChat},
                                                  {"TELEGRAM_POLL_TIMEOUT_S", "1"},
                                                  {"WEBHOOK_SECRETS", "github=gh-secret"}};
        for (auto& [k, v] : gateway_env) env[k] = v;
        gw = s.start("interfaces/gateway/engram-gateway", env);
        REQUIRE(testing::eventually(
            [&] {
                http::Client c(gateway_url());
                auto r = c.get("/readyz");
                return r.ok() && r->status == 200;
            },
            20s));
    }
    std::string gateway_url() const { return "http://127.0.0.1:" + std::to_string(gw_port); }

    std::vector<fakes::FakeTelegram::Message> replies_to(const std::string& chat) const {
        std::vector<fakes::FakeTelegram::Message> out;
        for (auto& m : tg.messages())
            if (m.chat_id == chat) out.push_back(m);
        return out;
    }
    std::string logs() {
        std::string out;
        for (auto* p : {ai.get(), ai2.get(), notify.get(), notify2.get(), gw.get()})
            out += "--- " + p->log_path() + "\n" + testing::tail_file(p->log_path(), 3000);
        return out;
    }
    // The session's events of the given type.
    std::vector<json> of_type(const std::string& session, const std::string& type) {
        std::vector<json> out;
        for (auto& e : s.aggregate(session))
            if (e["type"] == type) out.push_back(e);
        return out;
    }
    void settle() { std::this_thread::sleep_for(1500ms); }  // room for a duplicate to show up, if any
};

}  // namespace

TEST_CASE("e2e: a Telegram message (long polling) gets exactly one reply, a stranger one refusal", "[e2e]") {
    WholeStack w;
    w.tg.push_update(text_update(1, kChat, "hello engram"));
    w.tg.push_update(text_update(2, "999", "who are you?"));
    bool replied = testing::eventually([&] { return w.replies_to(kChat).size() >= 1; }, 60s);
    INFO(w.logs());
    REQUIRE(replied);
    w.settle();
    auto replies = w.replies_to(kChat);
    REQUIRE(replies.size() == 1);
    CHECK(replies[0].text == "Echo: hello engram");
    CHECK(replies[0].request["reply_to_message_id"] == 501);  // answers the user's message
    const std::string session = "session:telegram:" + kChat;
    REQUIRE(testing::eventually([&] { return w.of_type(session, "TelegramMessageSent").size() == 1; }, 10s));
    CHECK(w.of_type(session, "MessageReceived").size() == 1);
    CHECK(w.of_type(session, "MessageGenerated").size() == 1);
    CHECK(w.of_type(session, "AIProcessingCompleted").size() == 1);
    // "typing…" was shown in the chat while the run worked (never to the stranger).
    auto actions = w.tg.chat_actions();
    REQUIRE_FALSE(actions.empty());
    for (auto& [chat, action] : actions) {
        CHECK(chat == kChat);
        CHECK(action == "typing");
    }
    // The stranger: one refusal, and the model never heard of them.
    REQUIRE(w.replies_to("999").size() == 1);
    CHECK(w.s.count("AccessDenied") == 1);
    for (auto& req : w.llm.requests()) CHECK(req.dump().find("who are you") == std::string::npos);
}

TEST_CASE("e2e: a Telegram webhook delivered twice is stored once and answered once", "[e2e]") {
    WholeStack w(std::map<std::string, std::string>{{"TELEGRAM_WEBHOOK_SECRET", "e2e-secret"}});
    http::Client c(w.gateway_url());
    const std::string body = text_update(77, kChat, "webhook hello").dump();
    http::Headers h = {{"Content-Type", "application/json"}, {"X-Telegram-Bot-Api-Secret-Token", "e2e-secret"}};
    auto first = c.request("POST", "/telegram/webhook", body, h);
    REQUIRE(first.ok());
    CHECK(first->status == 200);
    // Telegram did not see our 200 (say) and delivers it again, while the run is under way.
    auto again = c.request("POST", "/telegram/webhook", body, h);
    REQUIRE(again.ok());
    CHECK(again->status == 200);
    bool replied = testing::eventually([&] { return w.replies_to(kChat).size() >= 1; }, 60s);
    INFO(w.logs());
    REQUIRE(replied);
    // And once more after the answer went out.
    CHECK(c.request("POST", "/telegram/webhook", body, h)->status == 200);
    w.settle();
    CHECK(w.replies_to(kChat).size() == 1);
    CHECK(w.s.count("MessageReceived") == 1);
    CHECK(w.s.count("AIProcessingStarted") == 1);
    CHECK(w.tg.get_updates_calls().empty());  // webhook mode does not poll

    // A signed webhook from another system, delivered twice: stored once.
    const std::string gh = R"({"action":"opened","number":7})";
    auto now = std::to_string(
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    http::Headers sig = {{"Content-Type", "application/json"},
                         {"X-Signature-256", "sha256=" + gateway::hmac_sha256_hex("gh-secret", now + "." + gh)},
                         {"X-Webhook-Timestamp", now},
                         {"X-Delivery-Id", "delivery-1"}};
    CHECK(c.request("POST", "/webhooks/github", gh, sig)->status == 201);
    CHECK(c.request("POST", "/webhooks/github", gh, sig)->status == 200);
    CHECK(w.s.count("WebhookReceived") == 1);
}

TEST_CASE("e2e: a 6000-character answer arrives as two messages in order", "[e2e]") {
    WholeStack w;
    w.tg.push_update(text_update(5, kChat, "a long please"));
    bool both = testing::eventually([&] { return w.replies_to(kChat).size() >= 2; }, 60s);
    INFO(w.logs());
    REQUIRE(both);
    w.settle();
    auto replies = w.replies_to(kChat);
    REQUIRE(replies.size() == 2);
    const std::string expected = long_answer(6000);
    CHECK(replies[0].text.size() <= 4096);
    CHECK(replies[1].text.size() <= 4096);
    CHECK(expected.rfind(replies[0].text, 0) == 0);                 // the first part first
    CHECK(replies[0].text + "\n\n" + replies[1].text == expected);  // split at a paragraph, nothing lost
    auto sent = w.of_type("session:telegram:" + kChat, "TelegramMessageSent");
    REQUIRE(sent.size() == 1);
    CHECK(sent[0]["data"]["parts"] == 2);
}

TEST_CASE("e2e: Telegram's 429 delays the reply, which then arrives once", "[e2e]") {
    WholeStack w;
    w.tg.push_429(2);
    auto t0 = std::chrono::steady_clock::now();
    w.tg.push_update(text_update(9, kChat, "are you busy?"));
    bool replied = testing::eventually([&] { return w.replies_to(kChat).size() >= 1; }, 60s);
    INFO(w.logs());
    REQUIRE(replied);
    CHECK(std::chrono::steady_clock::now() - t0 >= 2s);  // retry_after honoured
    w.settle();
    CHECK(w.replies_to(kChat).size() == 1);
    CHECK(w.tg.send_calls() == 2);
    CHECK(w.replies_to(kChat)[0].text == "Echo: are you busy?");
}

TEST_CASE("e2e: kill -9 the AI instance in the middle of a run: the other instance answers, once", "[e2e]") {
    WholeStack w;
    const std::string session = "session:telegram:" + kChat;
    w.tg.push_update(text_update(1, kChat, "slow please"));
    REQUIRE(testing::eventually([&] { return !w.llm.requests().empty(); }, 30s));
    // The instance that owns the session's partition is the one waiting for the model.
    pqxx::connection c(w.s.db());
    pqxx::work tx(c);
    auto row = tx.exec_params(
        "SELECT m.pid FROM processor_leases l JOIN processor_members m ON m.processor = l.processor AND m.member = l.owner "
        "WHERE l.processor = 'ai-processor' AND l.partition = $1",
        engram::events::partition_of(session, 16));
    tx.commit();
    REQUIRE(row.size() == 1);
    int pid = row[0][0].as<int>();
    auto& victim = w.ai->pid() == pid ? w.ai : w.ai2;
    REQUIRE(victim->pid() == pid);
    auto t0 = std::chrono::steady_clock::now();
    victim->kill9();
    bool replied = testing::eventually([&] { return w.replies_to(kChat).size() >= 1; }, 60s);
    INFO(w.logs());
    REQUIRE(replied);
    WARN("answered " << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()
                     << " ms after the kill (lease 2 s, then a 4 s model call again)");
    w.settle();
    CHECK(w.replies_to(kChat).size() == 1);
    CHECK(w.replies_to(kChat)[0].text == "Echo: slow please");
    CHECK(w.of_type(session, "MessageGenerated").size() == 1);
    CHECK(w.of_type(session, "AIProcessingCompleted").size() == 1);
    CHECK(w.of_type(session, "TelegramMessageSent").size() == 1);
}

TEST_CASE("e2e: POST /trigger?wait=30 answers with the run's reply, like a function call, driven with curl", "[e2e]") {
    WholeStack w;
    auto port = std::to_string(w.gw_port);
    // curl, not our client: the gateway's long-held answer read by another stack's HTTP.
    auto out = testing::run({"curl", "-sS", "-m", "60", "-XPOST", "http://127.0.0.1:" + port + "/trigger?wait=30", "-H",
                             "Content-Type: application/json", "-w", "\n%{http_code}", "-d",
                             R"({"source":"script","user_id":"e2e","message":"ping from a script"})"},
                            {}, 90s);
    INFO(out.output << "\n" << w.logs());
    REQUIRE(out.exit_code == 0);
    auto nl = out.output.rfind('\n');
    REQUIRE(nl != std::string::npos);
    CHECK(out.output.substr(nl + 1) == "200");
    auto body = json::parse(out.output.substr(0, nl));
    CHECK(body["run"]["state"] == "completed");
    REQUIRE(body["messages"].size() == 1);
    CHECK(body["messages"][0]["text"] == "Echo: ping from a script");
    auto session = body["session_id"].get<std::string>();
    CHECK(w.of_type(session, "MessageGenerated").size() == 1);
    CHECK(w.of_type(session, "AIProcessingCompleted").size() == 1);
}

TEST_CASE("e2e: \"remind me\" over Telegram: the reminder reaches the chat once, when due, from two memory processors", "[e2e]") {
    WholeStack w;
    w.tg.push_update(text_update(1, kChat, "remind me to stretch in three seconds"));
    const std::string session = "session:telegram:" + kChat;
    auto reminded = [&] {
        int n = 0;
        for (auto& m : w.replies_to(kChat)) n += m.text.rfind("Echo: Reminder: stretch", 0) == 0;
        return n;
    };
    bool arrived = testing::eventually([&] { return reminded() >= 1; }, 60s);
    INFO(w.logs());
    REQUIRE(arrived);
    std::this_thread::sleep_for(3s);  // both schedulers polled again several times
    CHECK(reminded() == 1);
    REQUIRE(w.of_type(session, "ReminderScheduled").size() == 1);
    auto triggers = w.of_type(session, "TriggerReceived");
    REQUIRE(triggers.size() == 1);
    CHECK(triggers[0]["data"]["reminder_id"] == w.of_type(session, "ReminderScheduled")[0]["data"]["reminder_id"]);
    // Due three seconds after it was scheduled, and not fired before.
    auto due = parse_rfc3339(triggers[0]["data"]["context"]["reminder"]["due_at"].get<std::string>());
    auto fired = parse_rfc3339(triggers[0]["timestamp"].get<std::string>());
    REQUIRE(due);
    REQUIRE(fired);
    CHECK(*fired >= *due);
    CHECK(w.of_type(session, "AIProcessingCompleted").size() == 2);  // the request, then the reminder
}

TEST_CASE("e2e: a fork of a Telegram conversation, made with curl, is answered again with its model and never sent to the chat",
          "[e2e][fork]") {
    WholeStack w;
    const std::string session = "session:telegram:" + kChat;
    w.tg.push_update(text_update(1, kChat, "hello fork"));
    REQUIRE(testing::eventually([&] { return w.of_type(session, "AIProcessingCompleted").size() == 1; }, 60s));
    REQUIRE(testing::eventually([&] { return w.replies_to(kChat).size() == 1; }, 20s));
    const std::int64_t at = w.of_type(session, "MessageReceived")[0]["position"];
    const auto origin_events = w.s.aggregate(session).size();
    const auto calls_before = w.llm.request_count();

    auto out = testing::run({"curl", "-sS", "-m", "30", "-XPOST", w.gateway_url() + "/sessions/" + session + "/fork", "-H",
                             "Content-Type: application/json", "-H", "Idempotency-Key: e2e-fork", "-w", "\n%{http_code}", "-d",
                             json{{"at", at}, {"model", "fork-model"}}.dump()});
    INFO(out.output << "\n" << w.logs());
    REQUIRE(out.exit_code == 0);
    auto nl = out.output.rfind('\n');
    CHECK(out.output.substr(nl + 1) == "201");
    const std::string fork = json::parse(out.output.substr(0, nl))["session_id"];
    REQUIRE(fork.rfind("session:telegram:", 0) == 0);

    REQUIRE(testing::eventually([&] { return w.of_type(fork, "AIProcessingCompleted").size() == 1; }, 60s));
    auto answers = w.of_type(fork, "MessageGenerated");
    REQUIRE(answers.size() == 1);
    CHECK(answers[0]["data"]["text"] == "Echo: hello fork");  // the origin's message, asked again
    CHECK(answers[0]["data"]["channel"] == "api");
    CHECK(w.of_type(fork, "AIProcessingStarted")[0]["data"]["model"] == "fork-model");
    auto reqs = w.llm.requests();
    REQUIRE(reqs.size() > calls_before);
    for (std::size_t i = calls_before; i < reqs.size(); ++i) CHECK(reqs[i]["model"] == "fork-model");

    // The origin and its chat: untouched, nothing sent for the fork.
    w.settle();
    CHECK(w.s.aggregate(session).size() == origin_events);
    CHECK(w.replies_to(kChat).size() == 1);
    CHECK(w.of_type(fork, "TelegramMessageSent").empty());
    for (auto& [chat, action] : w.tg.chat_actions()) CHECK(chat == kChat);

    // Replaying either branch asks the model nothing.
    const auto calls = w.llm.request_count();
    for (const auto& s : {fork, session}) {
        auto rep = testing::run(
            {testing::build_dir() + "/interfaces/cli/engram", "--url", w.s.url(), "replay", "conversation", s, "--json"});
        INFO(rep.output);
        REQUIRE(rep.exit_code == 0);
        auto view = json::parse(rep.output)["state"];
        std::vector<std::string> texts;
        for (const auto& m : view["messages"]) texts.push_back(m["text"]);
        CHECK(texts == std::vector<std::string>{"hello fork", "Echo: hello fork"});
    }
    CHECK(w.llm.request_count() == calls);
}
