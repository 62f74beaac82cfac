#pragma once
// Chat-completion models behind one interface: an OpenAI-compatible HTTP provider (OpenAI, Ollama,
// vLLM, llama.cpp server) and a deterministic offline provider for machines with no model.
// See libs/llm/README.md. Threading: a Provider is not shared between threads unless stated; make one
// per run/thread (the offline provider is stateless and may be shared).
#include <chrono>
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

struct Request {
    std::vector<Message> messages;
    std::vector<ToolSpec> tools;
    double temperature = 0.2;
    int max_tokens = 0;  // 0 = not sent
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
};

// POST {base_url}/chat/completions with OpenAI tool calling. Retries timeouts/connect errors, 429 and
// 5xx; other 4xx are not retried. Not thread-safe (one keep-alive connection): one per thread.
std::unique_ptr<Provider> make_openai(OpenAIOptions o);

// "offline (rule-based, no model)": deterministic rules deciding from the conversation so far (see
// README). Stateless, thread-safe.
std::unique_ptr<Provider> make_offline();

// The chat-completions request body (exposed for tests).
nlohmann::json to_openai(const Request& r, const std::string& model);
// Parses a chat-completions response body (exposed for tests). U+0000 in the content or the arguments
// becomes U+FFFD: the answer is stored, and PostgreSQL cannot store U+0000.
Result<Completion> from_openai(const nlohmann::json& body);
// The same from the body's text, parsed with parse_json (llm_bad_response when it is refused).
Result<Completion> from_openai_text(std::string_view body);

}  // namespace engram::llm
