#include "fake_openai.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "engram/http/server.h"

namespace engram::fakes {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {

json usage_json() { return {{"prompt_tokens", 12}, {"completion_tokens", 5}, {"total_tokens", 17}}; }

json completion(json message, const std::string& finish_reason) {
    return {{"id", "chatcmpl-fake"},
            {"object", "chat.completion"},
            {"created", 0},
            {"choices", json::array({{{"index", 0}, {"message", std::move(message)}, {"finish_reason", finish_reason}}})},
            {"usage", usage_json()}};
}

}  // namespace

struct FakeOpenAI::Impl {
    struct Entry {
        int status = 200;
        json body;
        std::map<std::string, std::string> headers;
        milliseconds delay{0};
        bool is_delay = false;
        std::vector<std::string> sse;  // push_sse
        milliseconds sse_delay{0};
    };
    struct Rule {
        std::function<bool(const json&)> match;
        std::function<json(const json&)> answer;
        milliseconds delay;
    };

    mutable std::mutex mu;
    std::condition_variable cv;  // wakes delayed answers at shutdown
    bool stopping = false;
    std::deque<Entry> script;
    std::vector<Rule> rules;
    std::vector<json> requests;
    std::vector<std::map<std::string, std::string>> headers;
    std::vector<json> embedding_requests;
    milliseconds embeddings_delay{0};
    bool streaming = true;
    std::size_t piece_chars = 3;
    milliseconds stream_delay{0};
    std::unique_ptr<http::Server> server;

    void sleep(milliseconds d) {
        if (d.count() <= 0) return;
        std::unique_lock lk(mu);
        cv.wait_for(lk, d, [&] { return stopping; });
    }

    void handle(http::Request& req, std::shared_ptr<http::Responder> res) {
        std::string path = req.path;
        if (req.method == "GET" && (path == "/v1/models" || path == "/models")) {
            res->respond(http::Response::json(
                200, {{"object", "list"}, {"data", json::array({{{"id", "fake-model"}, {"object", "model"}}})}}));
            return;
        }
        if (req.method != "POST") {
            res->respond(http::Response::json(404, {{"error", {{"message", "not found: " + path}}}}));
            return;
        }
        json body = json::parse(req.body, nullptr, false);
        if (path == "/v1/embeddings" || path == "/embeddings") return embeddings(body, res);
        if (path != "/v1/chat/completions" && path != "/chat/completions") {
            res->respond(http::Response::json(404, {{"error", {{"message", "not found: " + path}}}}));
            return;
        }
        if (body.is_discarded()) {
            res->respond(
                http::Response::json(400, {{"error", {{"message", "body is not JSON"}, {"type", "invalid_request_error"}}}}));
            return;
        }
        Entry e;
        std::function<json(const json&)> answer;
        {
            std::lock_guard lk(mu);
            requests.push_back(body);
            headers.push_back(req.headers);
            for (auto& r : rules) {
                if (r.match(body)) {
                    answer = r.answer;
                    e.delay = r.delay;
                    break;
                }
            }
            if (!answer) {
                milliseconds delay{0};
                while (!script.empty() && script.front().is_delay) {
                    delay += script.front().delay;
                    script.pop_front();
                }
                if (script.empty()) {
                    e.status = 500;
                    e.body = {{"error", {{"message", "script exhausted"}, {"type", "fake_error"}}}};
                } else {
                    e = std::move(script.front());
                    script.pop_front();
                }
                e.delay = delay;
            }
        }
        sleep(e.delay);
        if (answer) {
            e.status = 200;
            e.body = answer(body);
        }
        if (!e.sse.empty()) return write_stream(res, e.sse, e.sse_delay);
        if (e.status == 200 && e.body.is_object() && !e.body.contains("model"))
            e.body["model"] = body.value("model", std::string("fake-model"));
        bool stream = false;
        std::size_t piece = 3;
        milliseconds delay{0};
        {
            std::lock_guard lk(mu);
            stream = streaming && body.value("stream", false) == true;
            piece = piece_chars;
            delay = stream_delay;
        }
        if (stream && e.status == 200 && e.body.is_object() && e.body.contains("choices")) {
            bool usage = body.contains("stream_options") && body["stream_options"].is_object() &&
                         body["stream_options"].value("include_usage", false);
            std::vector<std::string> writes;
            for (auto& c : FakeOpenAI::stream_chunks(e.body, piece, usage)) {
                std::string event = "data: " + c + "\n\n";
                writes.push_back(event.substr(0, event.size() / 2));
                writes.push_back(event.substr(event.size() / 2));
            }
            writes.push_back("data: [DONE]\n\n");
            return write_stream(res, writes, delay);
        }
        http::Response r = http::Response::json(e.status, e.body);
        for (auto& [k, v] : e.headers) r.headers.emplace_back(k, v);
        res->respond(std::move(r));
    }

    void write_stream(const std::shared_ptr<http::Responder>& res, const std::vector<std::string>& writes, milliseconds delay) {
        auto out = res->start_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
        for (std::size_t i = 0; i < writes.size(); ++i) {
            // Every other write is the second half of a chunk: only whole chunks wait.
            if (i % 2 == 0 || writes[i].rfind("data: [DONE]", 0) == 0) sleep(delay);
            // A huge write goes in pieces, as fast as the reader takes them (the server would
            // otherwise cut the stream off over its queue limit).
            for (std::size_t at = 0; at < writes[i].size() || at == 0; at += 64 << 10) {
                while (out->queued_bytes() > (1 << 20) && !out->closed()) std::this_thread::sleep_for(milliseconds(1));
                if (!out->write(writes[i].substr(at, 64 << 10)) && !writes[i].empty()) return;
                if (writes[i].empty()) break;
            }
            {
                std::lock_guard lk(mu);
                if (stopping) break;
            }
        }
        out->close();
    }

    void embeddings(const json& body, const std::shared_ptr<http::Responder>& res) {
        if (body.is_discarded() || !body.contains("input")) {
            res->respond(http::Response::json(400, {{"error", {{"message", "input is required"}}}}));
            return;
        }
        milliseconds delay{0};
        {
            std::lock_guard lk(mu);
            embedding_requests.push_back(body);
            delay = embeddings_delay;
        }
        sleep(delay);
        int dims = body.contains("dimensions") && body["dimensions"].is_number_integer() ? body["dimensions"].get<int>() : 64;
        if (dims <= 0 || dims > 4096) dims = 64;
        std::vector<std::string> inputs;
        if (body["input"].is_string())
            inputs.push_back(body["input"].get<std::string>());
        else if (body["input"].is_array())
            for (auto& i : body["input"]) inputs.push_back(i.is_string() ? i.get<std::string>() : i.dump());
        json data = json::array();
        int tokens = 0;
        for (std::size_t i = 0; i < inputs.size(); ++i) {
            data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", FakeOpenAI::embedding(inputs[i], dims)}});
            tokens += static_cast<int>(inputs[i].size() / 4 + 1);
        }
        res->respond(http::Response::json(200, {{"object", "list"},
                                                {"data", data},
                                                {"model", body.value("model", std::string("fake-embedding"))},
                                                {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}}));
    }

    void push(Entry e) {
        std::lock_guard lk(mu);
        script.push_back(std::move(e));
    }
};

FakeOpenAI::FakeOpenAI(int threads) : impl_(std::make_unique<Impl>()) {
    http::ServerOptions so;
    so.host = "127.0.0.1";
    so.port = 0;
    so.io_threads = 1;
    so.worker_threads = threads;
    so.body_limit = 16 << 20;
    Impl* impl = impl_.get();
    impl_->server = std::make_unique<http::Server>(
        so, [impl](http::Request& req, std::shared_ptr<http::Responder> res) { impl->handle(req, std::move(res)); });
    impl_->server->start();
}

FakeOpenAI::~FakeOpenAI() {
    {
        std::lock_guard lk(impl_->mu);
        impl_->stopping = true;
    }
    impl_->cv.notify_all();
    impl_->server->stop();
}

std::string FakeOpenAI::base_url() const { return "http://127.0.0.1:" + std::to_string(port()) + "/v1"; }
int FakeOpenAI::port() const { return impl_->server->port(); }

void FakeOpenAI::push_json(json completion_body) { impl_->push({200, std::move(completion_body), {}, {}, false, {}, {}}); }
void FakeOpenAI::push_text(std::string content) { push_json(text_body(content)); }
void FakeOpenAI::push_tool_calls(std::vector<std::tuple<std::string, std::string, json>> calls) {
    push_json(tool_calls_body(calls));
}
void FakeOpenAI::push_raw_tool_call(std::string id, std::string name, std::string raw_arguments) {
    json call = {{"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", raw_arguments}}}};
    push_json(completion({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({call})}}, "tool_calls"));
}
void FakeOpenAI::push_status(int status, json body, std::map<std::string, std::string> headers) {
    if (body.is_null() || (body.is_object() && body.empty()))
        body = {{"error", {{"message", "fake status " + std::to_string(status)}, {"type", "fake_error"}, {"code", nullptr}}}};
    impl_->push({status, std::move(body), std::move(headers), {}, false, {}, {}});
}
void FakeOpenAI::push_delay(milliseconds d) { impl_->push({0, {}, {}, d, true, {}, {}}); }
void FakeOpenAI::push_sse(std::vector<std::string> writes, milliseconds delay) {
    Impl::Entry e;
    e.sse = std::move(writes);
    if (e.sse.empty()) e.sse.push_back("");
    e.sse_delay = delay;
    impl_->push(std::move(e));
}
void FakeOpenAI::set_streaming(bool enabled, std::size_t piece_chars, milliseconds delay) {
    std::lock_guard lk(impl_->mu);
    impl_->streaming = enabled;
    impl_->piece_chars = piece_chars == 0 ? 1 : piece_chars;
    impl_->stream_delay = delay;
}

namespace {
// Pieces of at most n bytes, never cutting a UTF-8 sequence (a chunk must be valid JSON text).
std::vector<std::string> pieces(const std::string& s, std::size_t n) {
    std::vector<std::string> out;
    std::size_t at = 0;
    while (at < s.size()) {
        std::size_t end = std::min(s.size(), at + n);
        while (end < s.size() && end > at + 1 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
        while (end < s.size() && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) ++end;  // n shorter than one character
        out.push_back(s.substr(at, end - at));
        at = end;
    }
    return out;
}
}  // namespace

std::vector<std::string> FakeOpenAI::stream_chunks(const json& completion_body, std::size_t piece_chars, bool include_usage) {
    std::vector<std::string> out;
    json base = {{"id", completion_body.value("id", std::string("chatcmpl-fake"))},
                 {"object", "chat.completion.chunk"},
                 {"created", completion_body.value("created", 0)},
                 {"model", completion_body.value("model", std::string("fake-model"))}};
    auto chunk = [&](json delta, json finish) {
        json c = base;
        c["choices"] = json::array({{{"index", 0}, {"delta", std::move(delta)}, {"finish_reason", std::move(finish)}}});
        out.push_back(c.dump());
    };
    const json& choice = completion_body["choices"][0];
    const json& msg = choice.value("message", json::object());
    chunk({{"role", "assistant"}, {"content", ""}}, nullptr);
    std::string content;
    if (msg.contains("content") && msg["content"].is_string()) content = msg["content"].get<std::string>();
    if (msg.contains("content") && msg["content"].is_array())
        for (const auto& part : msg["content"])
            if (part.is_object() && part.contains("text") && part["text"].is_string()) content += part["text"].get<std::string>();
    for (auto& p : pieces(content, piece_chars)) chunk({{"content", p}}, nullptr);
    // Content of another type is passed on as it is: a hostile answer stays hostile when streamed.
    if (msg.contains("content") && !msg["content"].is_string() && !msg["content"].is_array() && !msg["content"].is_null())
        chunk({{"content", msg["content"]}}, nullptr);
    if (msg.contains("tool_calls") && msg["tool_calls"].is_array()) {
        int index = 0;
        for (const auto& tc : msg["tool_calls"]) {
            const json& fn = tc.value("function", json::object());
            std::string args = fn.contains("arguments")
                                   ? (fn["arguments"].is_string() ? fn["arguments"].get<std::string>() : fn["arguments"].dump())
                                   : "";
            json first = {{"index", index},
                          {"type", "function"},
                          {"function", {{"name", fn.value("name", std::string())}, {"arguments", ""}}}};
            if (tc.contains("id")) first["id"] = tc["id"];
            chunk({{"tool_calls", json::array({first})}}, nullptr);
            for (auto& p : pieces(args, piece_chars))
                chunk({{"tool_calls", json::array({{{"index", index}, {"function", {{"arguments", p}}}}})}}, nullptr);
            ++index;
        }
    }
    chunk(json::object(), choice.contains("finish_reason") ? choice["finish_reason"] : json("stop"));
    if (include_usage && completion_body.contains("usage")) {
        json c = base;
        c["choices"] = json::array();
        c["usage"] = completion_body["usage"];
        out.push_back(c.dump());
    }
    return out;
}

void FakeOpenAI::delay_embeddings(milliseconds d) {
    std::lock_guard lk(impl_->mu);
    impl_->embeddings_delay = d;
}

void FakeOpenAI::on(std::function<bool(const json&)> match, std::function<json(const json&)> answer, milliseconds delay) {
    std::lock_guard lk(impl_->mu);
    impl_->rules.push_back({std::move(match), std::move(answer), delay});
}

std::vector<json> FakeOpenAI::requests() const {
    std::lock_guard lk(impl_->mu);
    return impl_->requests;
}
std::size_t FakeOpenAI::request_count() const {
    std::lock_guard lk(impl_->mu);
    return impl_->requests.size();
}
std::vector<std::map<std::string, std::string>> FakeOpenAI::request_headers() const {
    std::lock_guard lk(impl_->mu);
    return impl_->headers;
}
std::size_t FakeOpenAI::script_remaining() const {
    std::lock_guard lk(impl_->mu);
    std::size_t n = 0;
    for (auto& e : impl_->script) n += e.is_delay ? 0 : 1;
    return n;
}
std::vector<json> FakeOpenAI::embedding_requests() const {
    std::lock_guard lk(impl_->mu);
    return impl_->embedding_requests;
}

json FakeOpenAI::text_body(const std::string& content) {
    return completion({{"role", "assistant"}, {"content", content}}, "stop");
}

json FakeOpenAI::tool_calls_body(const std::vector<std::tuple<std::string, std::string, json>>& calls) {
    json arr = json::array();
    for (auto& [id, name, args] : calls)
        arr.push_back({{"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", args.dump()}}}});
    return completion({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", arr}}, "tool_calls");
}

std::vector<float> FakeOpenAI::embedding(const std::string& text, int dimensions) {
    std::vector<float> v(static_cast<std::size_t>(dimensions), 0.0f);
    std::string word;
    auto flush = [&] {
        if (word.empty()) return;
        std::uint64_t h = 1469598103934665603ull;  // FNV-1a
        for (unsigned char c : word) h = (h ^ c) * 1099511628211ull;
        v[h % v.size()] += ((h >> 32) & 1) ? 1.0f : -1.0f;
        word.clear();
    };
    for (unsigned char c : text) {
        if (std::isalnum(c))
            word.push_back(static_cast<char>(std::tolower(c)));
        else
            flush();
    }
    flush();
    double norm = 0;
    for (float x : v) norm += double(x) * x;
    if (norm == 0)
        v[0] = 1.0f;
    else
        for (float& x : v) x = static_cast<float>(x / std::sqrt(norm));
    return v;
}

std::string FakeOpenAI::last_user_message(const json& request) {
    if (!request.contains("messages") || !request["messages"].is_array()) return "";
    const auto& m = request["messages"];
    for (auto it = m.rbegin(); it != m.rend(); ++it)
        if (it->is_object() && it->value("role", "") == "user" && (*it)["content"].is_string())
            return (*it)["content"].get<std::string>();
    return "";
}

}  // namespace engram::fakes
