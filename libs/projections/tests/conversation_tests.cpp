#include <catch2/catch.hpp>

#include "engram/projections/conversation.h"
#include "helpers.h"

using namespace engram;
using namespace engram::projections;
using nlohmann::json;
using test::ev;

namespace {

const std::string S = "session:telegram:77";

json received(std::string text, json message_id = nullptr, bool edited = false) {
    json d{{"channel", "telegram"}, {"text", std::move(text)}, {"user_id", "telegram:77"}, {"session_id", S}};
    if (!message_id.is_null()) d["message_id"] = message_id;
    if (edited) d["edited"] = true;
    return d;
}

json run(std::vector<events::Event> evs) { return fold(conversation(), S, evs); }

}  // namespace

TEST_CASE("conversation: TriggerReceived adds a user message from data.message", "[unit][projections]") {
    auto t =
        ev("TriggerReceived", S, {{"source", "cli"}, {"user_id", "telegram:77"}, {"session_id", S}, {"message", "hello"}}, 4);
    json s = run({t});
    REQUIRE(s["position"] == 4);
    REQUIRE(s["messages"].size() == 1);
    const json& m = s["messages"][0];
    REQUIRE(m["role"] == "user");
    REQUIRE(m["text"] == "hello");
    REQUIRE(m["channel"] == "telegram");  // from the session id when data.channel is absent
    REQUIRE(m["timestamp"] == format_rfc3339(test::time_at(4)));
    REQUIRE(m["event_id"] == t.id.str());
    REQUIRE(m["position"] == 4);
    REQUIRE(m["source"] == "cli");

    auto t2 = ev("TriggerReceived", S,
                 {{"source", "api"}, {"user_id", "u"}, {"session_id", S}, {"message", "x"}, {"channel", "email"}}, 5);
    REQUIRE(run({t, t2})["messages"][1]["channel"] == "email");
}

TEST_CASE("conversation: MessageReceived appends - an edit replaces the earlier message's text", "[unit][projections]") {
    auto a = ev("MessageReceived", S, received("first", 10), 1);
    auto b = ev("MessageReceived", S, received("second", 11), 2);
    auto edit = ev("MessageReceived", S, received("first, edited", 10, true), 3);
    json s = run({a, b, edit});
    REQUIRE(s["messages"].size() == 2);
    REQUIRE(s["messages"][0]["text"] == "first, edited");
    REQUIRE(s["messages"][0]["edited"] == true);
    REQUIRE(s["messages"][0]["event_id"] == a.id.str());  // still the original message
    REQUIRE(s["messages"][0]["position"] == 1);
    REQUIRE(s["messages"][1]["text"] == "second");
    REQUIRE_FALSE(s["messages"][1].contains("edited"));
    REQUIRE(s["messages"][0]["channel"] == "telegram");
    REQUIRE(s["position"] == 3);

    // the same message_id without edited=true is a new message
    REQUIRE(run({a, ev("MessageReceived", S, received("again", 10), 2)})["messages"].size() == 2);
    // an edit of a message not in the view is appended, marked edited
    json u = run({ev("MessageReceived", S, received("edited orphan", 99, true), 1)});
    REQUIRE(u["messages"].size() == 1);
    REQUIRE(u["messages"][0]["edited"] == true);
    // string message ids work too
    json st = run({ev("MessageReceived", S, received("x", "m1"), 1), ev("MessageReceived", S, received("y", "m1", true), 2)});
    REQUIRE(st["messages"].size() == 1);
    REQUIRE(st["messages"][0]["text"] == "y");
}

TEST_CASE("conversation: MessageGenerated adds an assistant message", "[unit][projections]") {
    json s = run({ev("MessageGenerated", S,
                     {{"text", "hi there"}, {"channel", "telegram"}, {"run_id", "5f2b9a10-7c3e-4d21-9b8a-6e5f4d3c2b1a"}}, 2)});
    REQUIRE(s["messages"].size() == 1);
    REQUIRE(s["messages"][0]["role"] == "assistant");
    REQUIRE(s["messages"][0]["text"] == "hi there");
    REQUIRE(s["messages"][0]["channel"] == "telegram");
    REQUIRE(s["messages"][0]["run_id"] == "5f2b9a10-7c3e-4d21-9b8a-6e5f4d3c2b1a");
}

TEST_CASE("conversation: run state follows AIProcessingStarted/Completed/Failed", "[unit][projections]") {
    const std::string r1 = "5f2b9a10-7c3e-4d21-9b8a-6e5f4d3c2b1a", r2 = "0b1e7c2a-3f4d-5a6b-8c9d-0e1f2a3b4c5d";
    auto started = ev("AIProcessingStarted", S, {{"run_id", r1}, {"trigger_event_id", r2}, {"model", "m"}, {"provider", "p"}}, 1);
    json s = run({started});
    REQUIRE(s["run"]["state"] == "running");
    REQUIRE(s["run"]["run_id"] == r1);
    REQUIRE(s["run"]["started_at"] == format_rfc3339(test::time_at(1)));
    REQUIRE_FALSE(s["run"].contains("finished_at"));

    auto done = ev("AIProcessingCompleted", S, {{"stop_reason", "task_complete"}, {"iterations", 3}, {"run_id", r1}}, 2);
    s = run({started, done});
    REQUIRE(s["run"]["state"] == "completed");
    REQUIRE(s["run"]["stop_reason"] == "task_complete");
    REQUIRE(s["run"]["iterations"] == 3);
    REQUIRE(s["run"]["finished_at"] == format_rfc3339(test::time_at(2)));
    REQUIRE(s["run"]["started_at"] == format_rfc3339(test::time_at(1)));

    auto failed = ev("AIProcessingFailed", S, {{"reason", "llm_timeout"}, {"detail", "The model did not answer."}}, 2);
    s = run({started, failed});
    REQUIRE(s["run"]["state"] == "failed");
    REQUIRE(s["run"]["reason"] == "llm_timeout");
    REQUIRE(s["run"]["detail"] == "The model did not answer.");
    REQUIRE(s["run"]["run_id"] == r1);

    // the end of another (older) run does not end the current one
    auto stale = ev("AIProcessingCompleted", S, {{"stop_reason", "end_turn"}, {"iterations", 1}, {"run_id", r2}}, 3);
    s = run({started, stale});
    REQUIRE(s["run"]["state"] == "running");
    REQUIRE(s["position"] == 3);

    // a new run after a failure starts clean
    auto started2 =
        ev("AIProcessingStarted", S, {{"run_id", r2}, {"trigger_event_id", r1}, {"model", "m"}, {"provider", "p"}}, 4);
    s = run({started, failed, started2});
    REQUIRE(s["run"]["state"] == "running");
    REQUIRE_FALSE(s["run"].contains("reason"));
    // completion without run_id (optional) on an idle conversation
    s = run({ev("AIProcessingCompleted", S, {{"stop_reason", "end_turn"}, {"iterations", 0}}, 1)});
    REQUIRE(s["run"]["state"] == "completed");
}

TEST_CASE("conversation: tool calls are matched by tool_call_id", "[unit][projections]") {
    auto c1 = ev("ToolCalled", S,
                 {{"tool", "recall"}, {"tool_call_id", "call_1"}, {"arguments", {{"query", "tea"}}}, {"iteration", 1}}, 1);
    auto c2 =
        ev("ToolCalled", S, {{"tool", "think"}, {"tool_call_id", "call_2"}, {"arguments", json::object()}, {"iteration", 1}}, 2);
    auto d1 =
        ev("ToolCompleted", S, {{"tool", "recall"}, {"tool_call_id", "call_1"}, {"result", {{"results", json::array()}}}}, 3);
    auto d2 = ev("ToolCompleted", S, {{"tool", "think"}, {"tool_call_id", "call_2"}, {"result", "boom"}, {"is_error", true}}, 4);
    json s = run({c1, c2, d1, d2});
    REQUIRE(s["tool_calls"].size() == 2);
    REQUIRE(s["tool_calls"][0]["tool"] == "recall");
    REQUIRE(s["tool_calls"][0]["arguments"] == json{{"query", "tea"}});
    REQUIRE(s["tool_calls"][0]["result"] == json{{"results", json::array()}});
    REQUIRE(s["tool_calls"][0]["is_error"] == false);
    REQUIRE(s["tool_calls"][0]["position"] == 1);
    REQUIRE(s["tool_calls"][1]["result"] == "boom");
    REQUIRE(s["tool_calls"][1]["is_error"] == true);

    json pending = run({c1});
    REQUIRE_FALSE(pending["tool_calls"][0].contains("result"));
    // a completion without its call is still recorded
    json orphan = run({d1});
    REQUIRE(orphan["tool_calls"].size() == 1);
    REQUIRE(orphan["tool_calls"][0]["arguments"].is_null());
    REQUIRE(orphan["tool_calls"][0]["result"] == json{{"results", json::array()}});
}

TEST_CASE("conversation: ThinkingGenerated keeps the last 5", "[unit][projections]") {
    std::vector<events::Event> evs;
    for (int i = 1; i <= 7; ++i) evs.push_back(ev("ThinkingGenerated", S, {{"text", "t" + std::to_string(i)}}, i));
    json s = run(evs);
    REQUIRE(s["thinking"] == json{"t3", "t4", "t5", "t6", "t7"});
}

TEST_CASE("conversation: deliveries mark the source message", "[unit][projections]") {
    auto g = ev("MessageGenerated", S, {{"text", "answer"}, {"channel", "telegram"}}, 1);
    auto g2 = ev("MessageGenerated", S, {{"text", "answer 2"}, {"channel", "email"}}, 2);
    auto sent =
        ev("TelegramMessageSent", S, {{"chat_id", 77}, {"message_ids", {5}}, {"source_event_id", g.id.str()}, {"parts", 1}}, 3);
    auto fail = ev("NotificationFailed", S,
                   {{"source_event_id", g2.id.str()}, {"channel", "email"}, {"reason", "smtp_error"}, {"attempts", 3}}, 4);
    json s = run({g, g2, sent, fail});
    REQUIRE(s["messages"][0]["delivered"] == true);
    REQUIRE_FALSE(s["messages"][0].contains("delivery_error"));
    REQUIRE(s["messages"][1]["delivered"] == false);
    REQUIRE(s["messages"][1]["delivery_error"] == "smtp_error");
    REQUIRE(s["deliveries"].size() == 2);
    REQUIRE(s["deliveries"][0]["channel"] == "telegram");
    REQUIRE(s["deliveries"][0]["status"] == "delivered");
    REQUIRE(s["deliveries"][1]["status"] == "failed");
    REQUIRE(s["deliveries"][1]["reason"] == "smtp_error");

    // a later success clears the error; a failure after a success does not undo it
    auto email = ev("EmailSent", S, {{"to", {"a@example.com"}}, {"subject", "x"}, {"source_event_id", g2.id.str()}}, 5);
    auto slack_fail = ev("NotificationFailed", S,
                         {{"source_event_id", g.id.str()}, {"channel", "slack"}, {"reason", "http_500"}, {"attempts", 1}}, 6);
    s = run({g, g2, sent, fail, email, slack_fail});
    REQUIRE(s["messages"][1]["delivered"] == true);
    REQUIRE_FALSE(s["messages"][1].contains("delivery_error"));
    REQUIRE(s["messages"][0]["delivered"] == true);
    auto slack = ev("SlackMessageSent", S, {{"source_event_id", g.id.str()}, {"parts", 1}}, 7);
    REQUIRE(run({g, slack})["messages"][0]["delivered"] == true);
    // a delivery of an unknown message only lands in `deliveries`
    json o = run({ev("SlackMessageSent", S, {{"source_event_id", "0b1e7c2a-3f4d-5a6b-8c9d-0e1f2a3b4c5d"}, {"parts", 1}}, 1)});
    REQUIRE(o["messages"].empty());
    REQUIRE(o["deliveries"].size() == 1);
}

TEST_CASE("conversation: bounded to the last 200 messages and 200 tool calls", "[unit][projections]") {
    std::vector<events::Event> evs;
    std::int64_t p = 0;
    for (int i = 1; i <= 201; ++i) evs.push_back(ev("MessageReceived", S, received("m" + std::to_string(i)), ++p));
    for (int i = 1; i <= 201; ++i)
        evs.push_back(
            ev("ToolCalled", S,
               {{"tool", "think"}, {"tool_call_id", "c" + std::to_string(i)}, {"arguments", json::object()}, {"iteration", 1}},
               ++p));
    for (int i = 1; i <= 201; ++i)
        evs.push_back(ev(
            "NotificationFailed", S,
            {{"source_event_id", "0b1e7c2a-3f4d-5a6b-8c9d-0e1f2a3b4c5d"}, {"channel", "slack"}, {"reason", "x"}, {"attempts", 1}},
            ++p));
    json s = run(evs);
    REQUIRE(s["messages"].size() == kMaxMessages);
    REQUIRE(kMaxMessages == 200);
    REQUIRE(s["messages"].front()["text"] == "m2");
    REQUIRE(s["messages"].back()["text"] == "m201");
    REQUIRE(s["tool_calls"].size() == kMaxToolCalls);
    REQUIRE(s["tool_calls"].front()["tool_call_id"] == "c2");
    REQUIRE(s["tool_calls"].back()["tool_call_id"] == "c201");
    REQUIRE(s["deliveries"].size() == kMaxDeliveries);
    REQUIRE(s["position"] == p);

    std::vector<events::Event> exact(evs.begin(), evs.begin() + 200);
    REQUIRE(run(exact)["messages"].size() == 200);
    REQUIRE(run(exact)["messages"].front()["text"] == "m1");
}

TEST_CASE("conversation: missing optional fields and odd payloads are tolerated", "[unit][projections]") {
    std::vector<events::Event> evs = {
        ev("MessageReceived", S, json::object(), 1),
        ev("MessageGenerated", S, {{"text", 5}}, 2),
        ev("ToolCompleted", S, {{"tool_call_id", "zz"}}, 3),
        ev("AIProcessingFailed", S, json::object(), 4),
        ev("NotificationFailed", S, {{"source_event_id", 3}}, 5),
        ev("ThinkingGenerated", S, json::array(), 6),  // not an object: ignored
    };
    json s;
    REQUIRE_NOTHROW(s = run(evs));
    REQUIRE(s["messages"].size() == 2);
    REQUIRE(s["messages"][0]["text"] == "");
    REQUIRE(s["messages"][0]["channel"] == "telegram");
    REQUIRE(s["run"]["state"] == "failed");
    REQUIRE(s["run"]["reason"] == "unknown");
    REQUIRE(s["thinking"].empty());
    REQUIRE(s["position"] == 5);
}
