// OpenAI chat-completions wire format: request body and response parsing.
#include <string>

#include "engram/llm/llm.h"

namespace engram::llm {

using nlohmann::json;

namespace {

json message_json(const Message& m) {
    json j = {{"role", m.role}};
    if (m.role == "assistant" && !m.tool_calls.empty()) {
        // OpenAI wants content null (not "") next to tool calls; some servers reject "".
        j["content"] = m.content.empty() ? json(nullptr) : json(m.content);
        json calls = json::array();
        for (const auto& c : m.tool_calls) {
            std::string args = c.raw_arguments;
            if (args.empty()) args = c.arguments.is_null() ? std::string("{}") : c.arguments.dump();
            calls.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", args}}}});
        }
        j["tool_calls"] = std::move(calls);
    } else {
        j["content"] = m.content;
    }
    if (m.role == "tool") j["tool_call_id"] = m.tool_call_id;
    return j;
}

Error bad(std::string detail) { return Error::make("llm_bad_response", std::move(detail)); }

// What the model says ends up in events, and PostgreSQL cannot store U+0000: it becomes U+FFFD.
void clean(std::string& s) {
    if (s.find('\0') == std::string::npos) return;
    json j = std::move(s);
    replace_nul(j);
    s = j.get<std::string>();
}

const char* type_name(const json& j) { return j.type_name(); }

}  // namespace

json to_openai(const Request& r, const std::string& model, bool stream) {
    json body = {{"model", model}, {"temperature", r.temperature}};
    if (stream) {
        body["stream"] = true;
        body["stream_options"] = {{"include_usage", true}};
    }
    json msgs = json::array();
    for (const auto& m : r.messages) msgs.push_back(message_json(m));
    body["messages"] = std::move(msgs);
    if (r.max_tokens > 0) body["max_tokens"] = r.max_tokens;
    if (!r.tools.empty()) {
        json tools = json::array();
        for (const auto& t : r.tools) {
            json params = t.parameters.is_null() ? json{{"type", "object"}, {"properties", json::object()}} : t.parameters;
            tools.push_back(
                {{"type", "function"}, {"function", {{"name", t.name}, {"description", t.description}, {"parameters", params}}}});
        }
        body["tools"] = std::move(tools);
        body["tool_choice"] = "auto";
    }
    return body;
}

Result<Completion> from_openai(const json& body) {
    if (!body.is_object()) return bad(std::string("response is not a JSON object (got ") + type_name(body) + ")");
    if (body.contains("error") && !body["error"].is_null() && !body.contains("choices")) {
        const json& e = body["error"];
        std::string msg = e.is_string()                                                          ? e.get<std::string>()
                          : (e.is_object() && e.contains("message") && e["message"].is_string()) ? e["message"].get<std::string>()
                                                                                                 : e.dump();
        return Error::make("llm_error", "the model API answered an error: " + msg);
    }
    auto choices = body.find("choices");
    if (choices == body.end() || !choices->is_array() || choices->empty()) return bad("response has no choices");
    const json& choice = (*choices)[0];
    if (!choice.is_object() || !choice.contains("message") || !choice["message"].is_object())
        return bad("choices[0] has no message object");
    const json& msg = choice["message"];

    Completion c;
    c.raw = body;
    if (msg.contains("role") && msg["role"].is_string()) c.message.role = msg["role"].get<std::string>();
    if (c.message.role.empty()) c.message.role = "assistant";
    if (msg.contains("content")) {
        const json& content = msg["content"];
        if (content.is_string()) {
            c.message.content = content.get<std::string>();
        } else if (content.is_array()) {  // content parts [{type:text,text}]
            for (const auto& part : content)
                if (part.is_object() && part.contains("text") && part["text"].is_string())
                    c.message.content += part["text"].get<std::string>();
        } else if (!content.is_null()) {
            return bad(std::string("message content is a ") + type_name(content));
        }
    }
    if (msg.contains("tool_calls") && !msg["tool_calls"].is_null()) {
        const json& calls = msg["tool_calls"];
        if (!calls.is_array()) return bad("message tool_calls is not an array");
        for (std::size_t i = 0; i < calls.size(); ++i) {
            const json& tc = calls[i];
            if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object())
                return bad("tool_calls[" + std::to_string(i) + "] has no function object");
            const json& fn = tc["function"];
            if (!fn.contains("name") || !fn["name"].is_string() || fn["name"].get<std::string>().empty())
                return bad("tool_calls[" + std::to_string(i) + "] has no function name");
            ToolCall call;
            call.name = fn["name"].get<std::string>();
            // Some servers leave the id out; a deterministic stand-in keeps tool results answerable.
            call.id = (tc.contains("id") && tc["id"].is_string() && !tc["id"].get<std::string>().empty())
                          ? tc["id"].get<std::string>()
                          : "call_" + std::to_string(i);
            const json args = fn.contains("arguments") ? fn["arguments"] : json(nullptr);
            auto invalid = [&](const std::string& why) {
                Error e = Error::make("invalid_tool_call", "tool call '" + call.name + "' (id " + call.id + "): " + why);
                e.extra = {{"tool", call.name}, {"tool_call_id", call.id}, {"raw_arguments", call.raw_arguments}};
                return e;
            };
            if (args.is_string()) {
                call.raw_arguments = args.get<std::string>();
                bool blank = call.raw_arguments.find_first_not_of(" \t\r\n") == std::string::npos;
                if (blank) {
                    call.arguments = json::object();  // no-argument call from lenient servers
                } else {
                    auto parsed = parse_json(call.raw_arguments, "the arguments string", kMaxArgumentsDepth);
                    if (!parsed) return invalid(parsed.error().detail);
                    call.arguments = std::move(*parsed);
                }
            } else if (args.is_null()) {
                call.arguments = json::object();
            } else {
                call.arguments = args;  // already an object (some servers)
                call.raw_arguments = args.dump();
                if (json_depth(args) > kMaxArgumentsDepth)
                    return invalid("the arguments object has nesting deeper than " + std::to_string(kMaxArgumentsDepth) +
                                   " levels");
            }
            if (!call.arguments.is_object())
                return invalid(std::string("arguments are not a JSON object (got ") + type_name(call.arguments) + ")");
            replace_nul(call.arguments);
            c.message.tool_calls.push_back(std::move(call));
        }
    }
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
        c.finish_reason = choice["finish_reason"].get<std::string>();
    if (!c.message.tool_calls.empty()) c.finish_reason = "tool_calls";  // Ollama/llama.cpp may say "stop"
    if (body.contains("usage") && body["usage"].is_object()) {
        const json& u = body["usage"];
        // Counts only: anything that is not a plausible count is 0 (never a cast out of range).
        auto num = [&](const char* k) {
            if (!u.contains(k) || !u[k].is_number()) return 0;
            double v = u[k].get<double>();
            return v >= 0 && v <= 1e9 ? static_cast<int>(v) : 0;
        };
        c.usage.prompt_tokens = num("prompt_tokens");
        c.usage.completion_tokens = num("completion_tokens");
        c.usage.total_tokens = num("total_tokens");
        if (c.usage.total_tokens == 0) c.usage.total_tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
    }
    if (body.contains("model") && body["model"].is_string()) c.model = body["model"].get<std::string>();
    for (std::string* s : {&c.message.role, &c.message.content, &c.finish_reason, &c.model}) clean(*s);
    for (auto& call : c.message.tool_calls)
        for (std::string* s : {&call.id, &call.name, &call.raw_arguments}) clean(*s);
    return c;
}

Result<Completion> from_openai_text(std::string_view body) {
    auto j = parse_json(body, "the model's answer");
    if (!j) return bad(j.error().detail);
    return from_openai(*j);
}

}  // namespace engram::llm
