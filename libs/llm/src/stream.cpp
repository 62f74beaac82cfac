// A streamed chat completion ("stream": true): server-sent `data:` chunks assembled into the body a
// non-streamed answer would have had, so that one parser (from_openai) decides what the answer is.
#include <map>
#include <string>

#include "engram/llm/llm.h"

namespace engram::llm {

using nlohmann::json;

namespace {

Error bad(std::string detail) { return Error::make("llm_bad_response", "the model's stream: " + std::move(detail)); }

struct Call {
    std::string id, name, arguments;
};

}  // namespace

struct StreamAssembler::Impl {
    StreamLimits limits;
    DeltaSink sink;
    std::size_t total = 0;
    std::string line, data;
    bool has_data = false, after_cr = false, is_done = false;

    std::string id, model, role = "assistant", content, finish_reason, fingerprint;
    std::int64_t created = 0;
    std::map<int, Call> calls;  // by index: fragments of one call may come between those of another
    int last_index = -1;
    json usage;

    void emit(const Delta& d) {
        if (sink) sink(d);
    }

    Status feed(std::string_view bytes) {
        if (is_done) return ok();
        total += bytes.size();
        if (total > limits.max_bytes)
            return bad("the answer exceeds " + std::to_string(limits.max_bytes) + " bytes (LLM stream limit)");
        for (std::size_t i = 0; i < bytes.size() && !is_done; ++i) {
            char ch = bytes[i];
            if (after_cr) {
                after_cr = false;
                if (ch == '\n') continue;
            }
            if (ch == '\r' || ch == '\n') {
                after_cr = ch == '\r';
                if (auto s = process_line(); !s) return s;
                line.clear();
                continue;
            }
            line.push_back(ch);
            if (line.size() > limits.max_line)
                return bad("a line exceeds " + std::to_string(limits.max_line) + " bytes (LLM stream limit)");
        }
        return ok();
    }

    Status process_line() {
        if (line.empty()) return dispatch();
        if (line.front() == ':') return ok();  // a comment (keep-alive)
        auto colon = line.find(':');
        std::string field = line.substr(0, colon);
        std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.erase(0, 1);
        if (field != "data") return ok();  // event, id, retry: nothing a chat completion needs
        if (has_data) data.push_back('\n');
        data += value;
        has_data = true;
        if (data.size() > limits.max_line)
            return bad("an event exceeds " + std::to_string(limits.max_line) + " bytes (LLM stream limit)");
        return ok();
    }

    Status dispatch() {
        if (!has_data) return ok();
        std::string d = std::move(data);
        data.clear();
        has_data = false;
        if (d == "[DONE]") {
            is_done = true;
            return ok();
        }
        auto j = parse_json(d, "a chunk of the model's stream");
        if (!j) return bad(j.error().detail + "; it begins: " + d.substr(0, 200));
        return chunk(*j);
    }

    Status chunk(const json& c) {
        if (!c.is_object()) return bad(std::string("a chunk is not a JSON object (got ") + c.type_name() + ")");
        if (c.contains("error") && !c["error"].is_null()) {
            const json& e = c["error"];
            std::string msg = e.is_string() ? e.get<std::string>()
                              : (e.is_object() && e.contains("message") && e["message"].is_string())
                                  ? e["message"].get<std::string>()
                                  : e.dump();
            return Error::make("llm_error", "the model API answered an error in its stream: " + msg);
        }
        auto str = [&](const char* k, std::string& out) {
            if (c.contains(k) && c[k].is_string() && out.empty()) out = c[k].get<std::string>();
        };
        str("id", id);
        str("model", model);
        str("system_fingerprint", fingerprint);
        if (c.contains("created") && c["created"].is_number_integer()) created = c["created"].get<std::int64_t>();
        if (c.contains("usage") && c["usage"].is_object()) usage = c["usage"];
        if (!c.contains("choices") || c["choices"].is_null()) return ok();
        const json& choices = c["choices"];
        if (!choices.is_array()) return bad("a chunk's choices is not an array");
        for (const auto& ch : choices) {
            if (!ch.is_object()) return bad("a chunk's choice is not an object");
            // One answer is asked for; other choices (n > 1 on a server's own initiative) are not it.
            if (ch.contains("index") && ch["index"] != 0) continue;
            if (ch.contains("finish_reason") && ch["finish_reason"].is_string())
                finish_reason = ch["finish_reason"].get<std::string>();
            if (!ch.contains("delta") || ch["delta"].is_null()) continue;
            const json& delta = ch["delta"];
            if (!delta.is_object()) return bad("a chunk's delta is not an object");
            if (delta.contains("role") && delta["role"].is_string()) role = delta["role"].get<std::string>();
            if (delta.contains("content") && !delta["content"].is_null()) {
                if (!delta["content"].is_string()) return bad("a delta's content is not a string");
                const auto& text = delta["content"].get_ref<const std::string&>();
                if (!text.empty()) {
                    content += text;
                    emit({Delta::Kind::content, text, 0, {}, {}});
                }
            }
            if (delta.contains("tool_calls") && !delta["tool_calls"].is_null()) {
                if (!delta["tool_calls"].is_array()) return bad("a delta's tool_calls is not an array");
                for (const auto& tc : delta["tool_calls"])
                    if (auto s = tool_call(tc); !s) return s;
            }
        }
        return ok();
    }

    Status tool_call(const json& tc) {
        if (!tc.is_object()) return bad("a tool-call delta is not an object");
        std::string new_id = tc.contains("id") && tc["id"].is_string() ? tc["id"].get<std::string>() : "";
        int index = 0;
        if (tc.contains("index")) {
            const json& ix = tc["index"];
            if (!ix.is_number_integer() || ix.get<std::int64_t>() < 0 || ix.get<std::int64_t>() >= limits.max_tool_calls)
                return bad("tool-call index " + ix.dump().substr(0, 40) + " is not an integer in [0, " +
                           std::to_string(limits.max_tool_calls) + ")");
            index = static_cast<int>(ix.get<std::int64_t>());
        } else {
            // Some servers leave the index out: a new id starts the next call, anything else continues.
            index = last_index < 0 ? 0 : last_index;
            if (last_index >= 0 && !new_id.empty() && new_id != calls[last_index].id) index = calls.rbegin()->first + 1;
            if (index >= limits.max_tool_calls) return bad("more than " + std::to_string(limits.max_tool_calls) + " tool calls");
        }
        last_index = index;
        Call& call = calls[index];
        Delta d{Delta::Kind::tool_call, {}, index, {}, {}};
        if (!new_id.empty() && call.id.empty()) d.id = call.id = new_id;
        if (tc.contains("function") && !tc["function"].is_null()) {
            const json& fn = tc["function"];
            if (!fn.is_object()) return bad("a tool-call delta's function is not an object");
            if (fn.contains("name") && fn["name"].is_string()) {
                const auto& name = fn["name"].get_ref<const std::string&>();
                // Named once by most servers; some repeat the whole name, some send it in pieces.
                if (!name.empty() && name != call.name) {
                    call.name += name;
                    d.name = call.name;
                }
            }
            if (fn.contains("arguments") && !fn["arguments"].is_null()) {
                const json& a = fn["arguments"];
                d.text = a.is_string() ? a.get<std::string>() : a.dump();
                call.arguments += d.text;
            }
        }
        if (!d.id.empty() || !d.name.empty() || !d.text.empty()) emit(d);
        return ok();
    }

    json body() const {
        json msg = {{"role", role}};
        if (calls.empty()) {
            msg["content"] = content;
        } else {
            msg["content"] = content.empty() ? json(nullptr) : json(content);
            json arr = json::array();
            for (const auto& [index, c] : calls) {
                json call = {{"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}};
                if (!c.id.empty()) call["id"] = c.id;
                arr.push_back(std::move(call));
            }
            msg["tool_calls"] = std::move(arr);
        }
        json choice = {{"index", 0}, {"message", std::move(msg)}};
        choice["finish_reason"] = finish_reason.empty() ? json(nullptr) : json(finish_reason);
        json b = {{"object", "chat.completion"}, {"created", created}, {"choices", json::array({std::move(choice)})}};
        if (!id.empty()) b["id"] = id;
        if (!model.empty()) b["model"] = model;
        if (!fingerprint.empty()) b["system_fingerprint"] = fingerprint;
        if (!usage.is_null()) b["usage"] = usage;
        return b;
    }
};

StreamAssembler::StreamAssembler(StreamLimits limits, DeltaSink sink) : impl_(std::make_unique<Impl>()) {
    impl_->limits = limits;
    impl_->sink = std::move(sink);
}
StreamAssembler::~StreamAssembler() = default;

Status StreamAssembler::feed(std::string_view bytes) { return impl_->feed(bytes); }
bool StreamAssembler::done() const { return impl_->is_done; }
bool StreamAssembler::finished() const { return !impl_->finish_reason.empty(); }
json StreamAssembler::body() const { return impl_->body(); }

Status StreamAssembler::end() {
    auto& im = *impl_;
    if (im.is_done) return ok();
    if (!im.line.empty()) {
        if (auto s = im.process_line(); !s) return s;
        im.line.clear();
    }
    return im.dispatch();
}

Result<Completion> StreamAssembler::finish() {
    if (auto s = end(); !s) return std::move(s).error();
    return from_openai(impl_->body());
}

}  // namespace engram::llm
