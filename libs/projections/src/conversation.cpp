// The `conversation` projection (see README.md for the state shape and the rules).
#include "engram/projections/conversation.h"

#include <algorithm>

#include "engram/core/time.h"
#include "engram/events/types.h"
#include "util.h"

namespace engram::projections {
namespace {

namespace T = events::types;
using detail::has_string;
using detail::str;
using nlohmann::json;

constexpr std::string_view kPrefix = "session:";

// "session:<channel>:<id>" -> "<channel>" ("" when the id has no channel part).
std::string channel_of_session(std::string_view session) {
    if (session.substr(0, kPrefix.size()) != kPrefix) return {};
    auto rest = session.substr(kPrefix.size());
    auto colon = rest.find(':');
    return colon == std::string_view::npos ? std::string() : std::string(rest.substr(0, colon));
}

// Drops the oldest entries of `arr` beyond `max`.
void bound(json& arr, std::size_t max) {
    if (arr.size() > max) arr.erase(arr.begin(), arr.begin() + static_cast<std::ptrdiff_t>(arr.size() - max));
}

json& array_field(json& state, const char* key) {
    json& a = state[key];
    if (!a.is_array()) a = json::array();
    return a;
}

// Built member by member: an initializer list copies every value through temporaries, which made
// this the most expensive step of a rebuild.
json new_message(const events::Event& e, std::string role, std::string text, std::string channel) {
    json msg(json::value_t::object);
    auto& o = msg.get_ref<json::object_t&>();
    o.emplace("role", std::move(role));
    o.emplace("text", std::move(text));
    o.emplace("channel", std::move(channel));
    o.emplace("timestamp", format_rfc3339(e.timestamp));
    o.emplace("event_id", e.id.str());
    o.emplace("position", e.position.value());
    return msg;
}

void append_message(json& state, json msg) {
    json& messages = array_field(state, "messages");
    messages.push_back(std::move(msg));
    bound(messages, kMaxMessages);
}

void on_trigger(json& state, const events::Event& e) {
    const json& d = e.data;
    std::string channel = str(d, "channel", channel_of_session(e.aggregate_id));
    json msg = new_message(e, "user", str(d, "message"), std::move(channel));
    if (has_string(d, "source")) msg["source"] = d["source"];
    append_message(state, std::move(msg));
}

void on_message_received(json& state, const events::Event& e) {
    const json& d = e.data;
    auto mid = d.find("message_id");
    bool has_mid = mid != d.end() && (mid->is_string() || mid->is_number_integer());
    bool edited = d.value("edited", json(false)) == json(true);
    if (edited && has_mid) {
        json& messages = array_field(state, "messages");
        for (auto it = messages.rbegin(); it != messages.rend(); ++it) {
            if ((*it).value("role", "") == "user" && it->contains("message_id") && (*it)["message_id"] == *mid) {
                (*it)["text"] = str(d, "text");
                (*it)["edited"] = true;
                return;
            }
        }
    }
    // A new message (or an edit of a message no longer in the view: appended, marked edited).
    json msg = new_message(e, "user", str(d, "text"), str(d, "channel", channel_of_session(e.aggregate_id)));
    if (has_mid) msg["message_id"] = *mid;
    if (edited) msg["edited"] = true;
    append_message(state, std::move(msg));
}

// A fork's first event: where its history comes from, and the new user turn when it asks one.
void on_forked(json& state, const events::Event& e) {
    const json& d = e.data;
    auto at = d.find("at_position");
    state["forked_from"] = {{"session_id", str(d, "origin_session_id")},
                            {"position", at != d.end() && at->is_number_integer() ? *at : json(0)}};
    if (has_string(d, "model")) state["forked_from"]["model"] = d["model"];
    if (has_string(d, "prompt"))
        append_message(state, new_message(e, "user", str(d, "prompt"), channel_of_session(e.aggregate_id)));
}

void on_message_generated(json& state, const events::Event& e) {
    const json& d = e.data;
    json msg = new_message(e, "assistant", str(d, "text"), str(d, "channel", channel_of_session(e.aggregate_id)));
    if (has_string(d, "run_id")) msg["run_id"] = d["run_id"];
    append_message(state, std::move(msg));
}

json& run_of(json& state) {
    json& run = state["run"];
    if (!run.is_object()) run = json{{"state", "idle"}};
    return run;
}

// A run's end event may name its run: one naming another run than the current one is stale.
bool same_run(const json& run, const json& data) {
    return !(run.contains("run_id") && has_string(data, "run_id") && run["run_id"] != data["run_id"]);
}

void on_started(json& state, const events::Event& e) {
    const json& d = e.data;
    json run{{"state", "running"}, {"started_at", format_rfc3339(e.timestamp)}};
    for (const char* k : {"run_id", "trigger_event_id", "model"})
        if (has_string(d, k)) run[k] = d[k];
    state["run"] = std::move(run);
}

void on_completed(json& state, const events::Event& e) {
    const json& d = e.data;
    json& run = run_of(state);
    if (!same_run(run, d)) return;
    run["state"] = "completed";
    if (has_string(d, "run_id")) run["run_id"] = d["run_id"];
    if (has_string(d, "stop_reason")) run["stop_reason"] = d["stop_reason"];
    if (d.contains("iterations") && d["iterations"].is_number_integer()) run["iterations"] = d["iterations"];
    run.erase("reason");
    run.erase("detail");
    run["finished_at"] = format_rfc3339(e.timestamp);
}

void on_failed(json& state, const events::Event& e) {
    const json& d = e.data;
    json& run = run_of(state);
    if (!same_run(run, d)) return;
    run["state"] = "failed";
    if (has_string(d, "run_id")) run["run_id"] = d["run_id"];
    run["reason"] = str(d, "reason", "unknown");
    if (has_string(d, "detail")) run["detail"] = d["detail"];
    run.erase("stop_reason");
    run["finished_at"] = format_rfc3339(e.timestamp);
}

// The last tool call with this tool_call_id (and the same run, when both name one); nullptr if none.
json* find_tool_call(json& calls, const json& d) {
    std::string id = str(d, "tool_call_id");
    for (auto it = calls.rbegin(); it != calls.rend(); ++it) {
        if ((*it).value("tool_call_id", "") != id) continue;
        if (it->contains("run_id") && has_string(d, "run_id") && (*it)["run_id"] != d["run_id"]) continue;
        return &*it;
    }
    return nullptr;
}

void on_tool_called(json& state, const events::Event& e) {
    const json& d = e.data;
    json& calls = array_field(state, "tool_calls");
    json call{{"tool", str(d, "tool")},
              {"tool_call_id", str(d, "tool_call_id")},
              {"arguments", d.contains("arguments") ? d["arguments"] : json::object()},
              {"position", e.position.value()}};
    if (has_string(d, "run_id")) call["run_id"] = d["run_id"];
    if (d.contains("iteration") && d["iteration"].is_number_integer()) call["iteration"] = d["iteration"];
    calls.push_back(std::move(call));
    bound(calls, kMaxToolCalls);
}

void on_tool_completed(json& state, const events::Event& e) {
    const json& d = e.data;
    json& calls = array_field(state, "tool_calls");
    json* call = find_tool_call(calls, d);
    if (!call) {  // its ToolCalled is not in the view (bounded out, or never written): record the outcome
        json c{{"tool", str(d, "tool")},
               {"tool_call_id", str(d, "tool_call_id")},
               {"arguments", nullptr},
               {"position", e.position.value()}};
        if (has_string(d, "run_id")) c["run_id"] = d["run_id"];
        calls.push_back(std::move(c));
        bound(calls, kMaxToolCalls);
        call = &calls.back();
    }
    (*call)["result"] = d.contains("result") ? d["result"] : json(nullptr);
    (*call)["is_error"] = d.value("is_error", json(false)) == json(true);
}

void on_thinking(json& state, const events::Event& e) {
    json& thinking = array_field(state, "thinking");
    thinking.push_back(str(e.data, "text"));
    bound(thinking, kMaxThinking);
}

void on_delivery(json& state, const events::Event& e, std::string channel, bool ok) {
    const json& d = e.data;
    std::string source = str(d, "source_event_id");
    json delivery{{"source_event_id", source},
                  {"channel", channel},
                  {"status", ok ? "delivered" : "failed"},
                  {"event_id", e.id.str()},
                  {"position", e.position.value()}};
    if (!ok) {
        delivery["reason"] = str(d, "reason", "unknown");
        if (has_string(d, "detail")) delivery["detail"] = d["detail"];
    }
    json& deliveries = array_field(state, "deliveries");
    deliveries.push_back(std::move(delivery));
    bound(deliveries, kMaxDeliveries);

    json& messages = array_field(state, "messages");
    for (auto it = messages.rbegin(); it != messages.rend(); ++it) {
        if ((*it).value("event_id", "") != source) continue;
        if (ok) {
            (*it)["delivered"] = true;
            (*it).erase("delivery_error");
        } else if ((*it).value("delivered", json(false)) != json(true)) {
            (*it)["delivered"] = false;
            (*it)["delivery_error"] = str(d, "reason", "unknown");
        }
        break;
    }
}

class Conversation final : public Projection {
public:
    std::string_view name() const override { return "conversation"; }

    Result<std::string> aggregate_of(std::string_view id) const override { return detail::session_instance("conversation", id); }

    std::vector<std::string_view> event_types() const override {
        return {T::TriggerReceived,       T::MessageReceived,     T::MessageGenerated, T::AIProcessingStarted,
                T::AIProcessingCompleted, T::AIProcessingFailed,  T::ToolCalled,       T::ToolCompleted,
                T::ThinkingGenerated,     T::TelegramMessageSent, T::EmailSent,        T::SlackMessageSent,
                T::NotificationFailed,    T::SessionForked};
    }

    json initial(std::string_view id) const override {
        return json{{"session_id", std::string(id)},  {"position", 0},
                    {"messages", json::array()},      {"tool_calls", json::array()},
                    {"run", json{{"state", "idle"}}}, {"thinking", json::array()},
                    {"deliveries", json::array()}};
    }

    json apply(json state, const events::Event& e) const override {
        if (!state.is_object()) return state;
        if (!detail::should_apply(state, e, str(state, "session_id"))) return state;
        const std::string& t = e.type;
        if (!e.data.is_object()) return state;
        if (t == T::TriggerReceived)
            on_trigger(state, e);
        else if (t == T::MessageReceived)
            on_message_received(state, e);
        else if (t == T::MessageGenerated)
            on_message_generated(state, e);
        else if (t == T::SessionForked)
            on_forked(state, e);
        else if (t == T::AIProcessingStarted)
            on_started(state, e);
        else if (t == T::AIProcessingCompleted)
            on_completed(state, e);
        else if (t == T::AIProcessingFailed)
            on_failed(state, e);
        else if (t == T::ToolCalled)
            on_tool_called(state, e);
        else if (t == T::ToolCompleted)
            on_tool_completed(state, e);
        else if (t == T::ThinkingGenerated)
            on_thinking(state, e);
        else if (t == T::TelegramMessageSent)
            on_delivery(state, e, "telegram", true);
        else if (t == T::EmailSent)
            on_delivery(state, e, "email", true);
        else if (t == T::SlackMessageSent)
            on_delivery(state, e, "slack", true);
        else if (t == T::NotificationFailed)
            on_delivery(state, e, str(e.data, "channel"), false);
        else
            return state;  // not folded: unchanged, position included
        state["position"] = e.position.value();
        return state;
    }
};

}  // namespace

const Projection& conversation() {
    static const Conversation instance;
    return instance;
}

}  // namespace engram::projections
