#pragma once
// A scriptable fake OpenAI-compatible server on 127.0.0.1 (free port) for tests: replays scripted
// chat-completions answers in order, records every request, can answer 429/500/timeouts/malformed tool
// calls, streams answers as server-sent chunks when asked ("stream": true), and serves a deterministic
// /v1/embeddings. Thread-safe.
//
// Include as "fake_openai.h" (or "fakes/fake_openai.h"); link engram_fake_openai.
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

namespace engram::fakes {

class FakeOpenAI {
public:
    // Starts listening; `threads` answers can be under way at once (delayed ones included).
    explicit FakeOpenAI(int threads = 8);
    ~FakeOpenAI();  // stops (delayed answers still sleeping are cut short)
    FakeOpenAI(const FakeOpenAI&) = delete;
    FakeOpenAI& operator=(const FakeOpenAI&) = delete;

    std::string base_url() const;  // http://127.0.0.1:<port>/v1
    int port() const;

    // Scripted answers, consumed in order by POST /v1/chat/completions; when the script is empty -> 500
    // {"error":{"message":"script exhausted"}}. A 200 body without "model" gets the request's model.
    void push_json(nlohmann::json completion_body);  // 200 with this body
    void push_text(std::string content);             // 200, assistant content, finish_reason stop
    void push_tool_calls(std::vector<std::tuple<std::string, std::string, nlohmann::json>> calls);  // (id, name, args)
    void push_raw_tool_call(std::string id, std::string name, std::string raw_arguments);           // malformed args
    // Any status; body {} -> {"error":{"message":"fake status N","type":"fake_error","code":null}}.
    void push_status(int status, nlohmann::json body = {}, std::map<std::string, std::string> headers = {});
    // Streaming: a request with "stream": true gets its answer as server-sent chunks (the content in
    // pieces of `piece_chars` bytes, each tool call named in one chunk and its arguments in pieces, a
    // finish chunk, a usage chunk when stream_options.include_usage, then [DONE]), each chunk written in
    // two halves so that a reader sees lines split across reads, `delay` before each chunk. Off
    // (`enabled` false): such a request is answered plain JSON, as some servers do.
    void set_streaming(bool enabled, std::size_t piece_chars = 3, std::chrono::milliseconds delay = {});
    // 200 text/event-stream with exactly these writes (a hostile or broken stream), `delay` before each.
    void push_sse(std::vector<std::string> writes, std::chrono::milliseconds delay = {});
    // The chunks' bodies the fake would stream for `completion_body` (also used for streaming).
    static std::vector<std::string> stream_chunks(const nlohmann::json& completion_body, std::size_t piece_chars,
                                                  bool include_usage);

    // The next answer taken from the script is delayed by d (delays add up until an answer is taken).
    void push_delay(std::chrono::milliseconds d);

    // A responder chosen per request by a predicate, checked before the script (first match wins);
    // answer returns a 200 completion body.
    void on(std::function<bool(const nlohmann::json& request)> match,
            std::function<nlohmann::json(const nlohmann::json& request)> answer, std::chrono::milliseconds delay = {});

    std::vector<nlohmann::json> requests() const;  // every chat-completions request body, in order
    std::size_t request_count() const;
    // Headers (lower-case names) of every chat-completions request, parallel to requests().
    std::vector<std::map<std::string, std::string>> request_headers() const;
    std::size_t script_remaining() const;
    // POST /v1/embeddings requests, in order (their bodies).
    std::vector<nlohmann::json> embedding_requests() const;
    // Every later POST /v1/embeddings answers only after d (recorded in embedding_requests() at once).
    void delay_embeddings(std::chrono::milliseconds d);

    // Helpers for building answers (also used by push_text/push_tool_calls).
    static nlohmann::json text_body(const std::string& content);
    static nlohmann::json tool_calls_body(const std::vector<std::tuple<std::string, std::string, nlohmann::json>>& calls);
    // The deterministic embedding the fake answers for `text` (hashed bag of words, L2-normalised).
    static std::vector<float> embedding(const std::string& text, int dimensions = 64);
    // The last message with role user in a chat-completions request body ("" when none).
    static std::string last_user_message(const nlohmann::json& request);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::fakes
