#pragma once
// Chat-completion models behind one interface: an OpenAI-compatible HTTP provider (OpenAI, Ollama,
// vLLM, llama.cpp server) and a deterministic offline provider for machines with no model.
// See libs/llm/README.md. Threading: a Provider is not shared between threads unless stated; make one
// per run/thread (the offline provider is stateless and may be shared).
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engram/core/json.h"
#include "engram/core/result.h"

namespace engram::llm {

// How deep a tool call's arguments may nest: the AI processor stores them in a ToolCalled event,
// four levels below the top of the store body (events[i].data.arguments), whose limit is kMaxJsonDepth.
inline constexpr int kMaxArgumentsDepth = kMaxJsonDepth - 4;

struct ToolCall {
    std::string id;
    std::string name;
    nlohmann::json arguments;   // always a JSON object once parsed by from_openai()
    std::string raw_arguments;  // the arguments string exactly as the model sent it
};

struct Message {
    std::string role;  // system|user|assistant|tool
    std::string content;
    std::vector<ToolCall> tool_calls;  // role assistant
    std::string tool_call_id;          // role tool
};

struct ToolSpec {
    std::string name;
    std::string description;
    nlohmann::json parameters;  // JSON schema
};

struct Usage {
    int prompt_tokens = 0, completion_tokens = 0, total_tokens = 0;
};

struct Completion {
    Message message;
    std::string finish_reason;  // "stop", "tool_calls" (forced when tool calls are present), "length"...
    Usage usage;
    std::string model;
    nlohmann::json raw;  // the whole response body
};

// One piece of a streamed answer, handed on as it arrives (for showing the answer being written; the
// Completion returned at the end is what counts).
struct Delta {
    enum class Kind {
        content,    // `text` is the next piece of the answer's text
        tool_call,  // the call at `index` grew: `id`/`name` on the piece that first names them, `text` is
                    // the next fragment of its arguments string
        restart,    // the attempt that sent the pieces so far failed and is being retried: drop them
    };
    Kind kind = Kind::content;
    std::string text;
    int index = 0;
    std::string id, name;
};
using DeltaSink = std::function<void(const Delta&)>;

struct Request {
    std::vector<Message> messages;
    std::vector<ToolSpec> tools;
    double temperature = 0.2;
    int max_tokens = 0;  // 0 = not sent
    // Called with the answer's pieces while a streaming provider receives it (never by a provider that
    // does not stream). Runs on the caller's thread, inside complete(); it must not throw.
    DeltaSink on_delta;
};

class Provider {
public:
    virtual ~Provider() = default;
    virtual std::string name() const = 0;
    virtual std::string model() const = 0;
    // Errors (engram::Error codes):
    //   llm_unreachable   connect errors / timeouts / 5xx, after the retries
    //   llm_rate_limited  429 after the retries
    //   llm_error         a 4xx other than 429 (detail: the API's message), not retried
    //   context_too_long  a 4xx whose error code/message says the context length is exceeded
    //   invalid_tool_call a tool call whose arguments are not a JSON object, or nest deeper than
    //                     kMaxArgumentsDepth (detail names the tool and the parse error; extra: tool,
    //                     tool_call_id, raw_arguments)
    //   llm_bad_response  malformed JSON (parse_json: also nesting deeper than kMaxJsonDepth, numbers
    //                     out of range) or an unexpected shape
    // Error::extra carries "status" (last HTTP status, 0 if none) and "attempts" where relevant.
    virtual Result<Completion> complete(const Request& r) = 0;
};

struct OpenAIOptions {
    std::string base_url;  // e.g. https://api.openai.com/v1 or http://127.0.0.1:PORT/v1
    std::string api_key;   // sent as "Authorization: Bearer <key>" when not empty
    std::string model = "gpt-4.1";
    std::chrono::milliseconds timeout{60000};              // per HTTP attempt
    int max_retries = 4;                                   // retries after the first attempt
    std::chrono::milliseconds backoff{500};                // doubles per retry, capped at 30 s; Retry-After
                                                           // (seconds, or retry-after-ms) honoured on 429/503
    std::function<void(std::chrono::milliseconds)> sleep;  // injectable; default std::this_thread::sleep_for
    bool verify_tls = true;                                // addition: for self-signed local servers
    // Ask for the answer as server-sent chunks ("stream": true, usage via stream_options) and hand its
    // pieces to Request::on_delta. A server that answers plain JSON anyway is accepted.
    bool stream = false;
    std::size_t stream_max_bytes = 16 << 20;                // the whole streamed answer
    std::size_t stream_max_line = 1 << 20;                  // one line (one chunk) of it
    int stream_max_tool_calls = 128;                        // tool-call indices 0..n-1
    std::chrono::milliseconds stream_max_duration{600000};  // one attempt, however steadily bytes arrive
};

struct StreamLimits {
    std::size_t max_bytes = 16 << 20;
    std::size_t max_line = 1 << 20;
    int max_tool_calls = 128;
};

// Assembles a chat-completions event stream (the body of a "stream": true answer, in any split) into
// the body a non-streamed answer would have had, and hands each piece to `sink` on the way. Exposed
// for tests and the fuzzer; the OpenAI provider uses it.
class StreamAssembler {
public:
    explicit StreamAssembler(StreamLimits limits = {}, DeltaSink sink = {});
    ~StreamAssembler();
    StreamAssembler(const StreamAssembler&) = delete;
    StreamAssembler& operator=(const StreamAssembler&) = delete;

    // Errors: llm_bad_response (a chunk that is not JSON or not a chunk, a tool-call index that is
    // not an integer in [0, max_tool_calls), a line over max_line, more than max_bytes in all),
    // llm_error (the server sent an error chunk). After an error, feed no more.
    Status feed(std::string_view bytes);
    // The stream ended: what is still buffered (a last line without its line end) is read.
    Status end();
    bool done() const;            // "data: [DONE]" was seen (later bytes are ignored)
    bool finished() const;        // a finish_reason was seen
    nlohmann::json body() const;  // what a non-streamed answer would have been, so far
    // from_openai(body()), after end().
    Result<Completion> finish();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// POST {base_url}/chat/completions with OpenAI tool calling. Retries timeouts/connect errors, 429 and
// 5xx; other 4xx are not retried. Not thread-safe (one keep-alive connection): one per thread.
std::unique_ptr<Provider> make_openai(OpenAIOptions o);

// "offline (rule-based, no model)": deterministic rules deciding from the conversation so far (see
// README). Stateless, thread-safe.
std::unique_ptr<Provider> make_offline();

// The chat-completions request body (exposed for tests); `stream` adds "stream": true and
// stream_options.include_usage.
nlohmann::json to_openai(const Request& r, const std::string& model, bool stream = false);
// Parses a chat-completions response body (exposed for tests). U+0000 in the content or the arguments
// becomes U+FFFD: the answer is stored, and PostgreSQL cannot store U+0000.
Result<Completion> from_openai(const nlohmann::json& body);
// The same from the body's text, parsed with parse_json (llm_bad_response when it is refused).
Result<Completion> from_openai_text(std::string_view body);

}  // namespace engram::llm
