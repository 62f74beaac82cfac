// The offline provider: deterministic rules, no model. Decides each step from the conversation so far
// (the last user message and the tool calls/results after it), so a resumed run gets the same answer.
#include <algorithm>
#include <cctype>

#include "engram/core/text.h"
#include "engram/llm/llm.h"

namespace engram::llm {

using nlohmann::json;

namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

enum class Flow { remember, recall, answer };

Flow classify(const std::string& text) {
    std::string l = lower(trim(text));
    if (l.rfind("remember ", 0) == 0) return Flow::remember;
    for (const char* p : {"what did i", "do you remember", "what's my", "what is my", "what was my", "whats my"})
        if (l.find(p) != std::string::npos) return Flow::recall;
    return Flow::answer;
}

// What a recall tool result says, in one line: accepts plain text, a JSON string, an array of strings
// or of objects with "text", or an object holding such an array under memories/results/items.
std::string recalled_text(const std::string& content) {
    auto parsed = parse_json(content, "the tool result");
    if (!parsed) return trim(content);
    json j = std::move(*parsed);
    if (j.is_string()) return trim(j.get<std::string>());
    if (j.is_object()) {
        for (const char* k : {"memories", "results", "items", "matches"})
            if (j.contains(k) && j[k].is_array()) {
                j = j[k];
                break;
            }
        if (j.is_object()) {
            for (const char* k : {"text", "answer", "result"})
                if (j.contains(k) && j[k].is_string()) return trim(j[k].get<std::string>());
            return "";
        }
    }
    if (j.is_array()) {
        std::string out;
        for (const auto& item : j) {
            std::string t;
            if (item.is_string())
                t = item.get<std::string>();
            else if (item.is_object() && item.contains("text") && item["text"].is_string())
                t = item["text"].get<std::string>();
            else if (item.is_object() && item.contains("content") && item["content"].is_string())
                t = item["content"].get<std::string>();
            t = trim(t);
            if (t.empty()) continue;
            if (!out.empty()) out += "; ";
            out += t;
        }
        return out;
    }
    return "";
}

class OfflineProvider final : public Provider {
public:
    std::string name() const override { return "offline (rule-based, no model)"; }
    std::string model() const override { return "offline"; }

    Result<Completion> complete(const Request& r) override {
        const auto& msgs = r.messages;
        std::size_t total_calls = 0;
        std::ptrdiff_t last_user = -1;
        for (std::size_t i = 0; i < msgs.size(); ++i) {
            total_calls += msgs[i].tool_calls.size();
            if (msgs[i].role == "user") last_user = static_cast<std::ptrdiff_t>(i);
        }
        if (last_user < 0) return text("There is no message to answer.");
        const std::string user = msgs[last_user].content;

        // Tool calls made since the last user message (name -> id) and the tool results answering them.
        std::map<std::string, std::string> called;
        std::map<std::string, std::string> results;  // tool_call_id -> content
        for (std::size_t i = last_user + 1; i < msgs.size(); ++i) {
            for (const auto& c : msgs[i].tool_calls) called.emplace(c.name, c.id);
            if (msgs[i].role == "tool") results[msgs[i].tool_call_id] = msgs[i].content;
        }
        auto done = [&](const std::string& tool) { return called.count(tool) > 0; };
        auto next_id = "offline_call_" + std::to_string(total_calls + 1);

        switch (classify(user)) {
            case Flow::remember: {
                std::string fact = trim(trim(user).substr(9));
                if (!done("remember")) return call(next_id, "remember", {{"text", fact}});
                if (!done("send_message"))
                    return call(next_id, "send_message", {{"text", "Got it, I will remember that: " + fact}});
                if (!done("task_complete")) return call(next_id, "task_complete", {{"summary", "Stored a memory: " + fact}});
                break;
            }
            case Flow::recall: {
                if (!done("recall")) return call(next_id, "recall", {{"query", user}});
                if (!done("send_message")) {
                    auto it = results.find(called["recall"]);
                    std::string found = it == results.end() ? "" : recalled_text(it->second);
                    std::string reply = found.empty() ? "I don't know yet." : "Here is what I remember: " + found;
                    return call(next_id, "send_message", {{"text", reply}});
                }
                if (!done("task_complete")) return call(next_id, "task_complete", {{"summary", "Answered from memory."}});
                break;
            }
            case Flow::answer: {
                if (!done("think"))
                    return call(
                        next_id, "think",
                        {{"thought", "No model is configured; answering \"" + trim(user) + "\" with the offline rules."}});
                if (!done("send_message"))
                    return call(next_id, "send_message",
                                {{"text", "I'm running offline (rule-based, no model), so I can't really answer \"" + trim(user) +
                                              "\". Tell me \"remember ...\" and I'll keep it, or ask \"what did I ...?\" "
                                              "and I'll look it up."}});
                if (!done("task_complete")) return call(next_id, "task_complete", {{"summary", "Answered offline."}});
                break;
            }
        }
        return text("");  // the flow is complete: nothing more to do
    }

private:
    Completion base() const {
        Completion c;
        c.model = "offline";
        c.message.role = "assistant";
        return c;
    }

    Completion call(const std::string& id, const std::string& tool, json args) const {
        Completion c = base();
        ToolCall tc{id, tool, std::move(args), ""};
        tc.raw_arguments = tc.arguments.dump();
        c.message.tool_calls.push_back(tc);
        c.finish_reason = "tool_calls";
        c.raw = {{"model", "offline"},
                 {"choices",
                  json::array(
                      {{{"index", 0},
                        {"finish_reason", "tool_calls"},
                        {"message",
                         {{"role", "assistant"},
                          {"content", nullptr},
                          {"tool_calls", json::array({{{"id", id},
                                                       {"type", "function"},
                                                       {"function", {{"name", tool}, {"arguments", tc.raw_arguments}}}}})}}}}})}};
        return c;
    }

    Completion text(const std::string& content) const {
        Completion c = base();
        c.message.content = content;
        c.finish_reason = "stop";
        c.raw = {{"model", "offline"},
                 {"choices",
                  json::array(
                      {{{"index", 0}, {"finish_reason", "stop"}, {"message", {{"role", "assistant"}, {"content", content}}}}})}};
        return c;
    }
};

}  // namespace

std::unique_ptr<Provider> make_offline() { return std::make_unique<OfflineProvider>(); }

}  // namespace engram::llm
