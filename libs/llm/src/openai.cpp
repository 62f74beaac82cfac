// OpenAI-compatible chat-completions provider with retries and back-off.
#include <algorithm>
#include <cctype>
#include <optional>
#include <thread>

#include "engram/http/client.h"
#include "engram/llm/llm.h"
#include "engram/log/log.h"

namespace engram::llm {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kBackoffCap{30000};
constexpr milliseconds kRetryAfterCap{300000};  // a server asking for more than 5 min is not waited for longer

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// The API's own error message and code, from {"error":{"message","code","type"}}, {"error":"..."} or text.
std::pair<std::string, std::string> api_error(const http::ClientResponse& r) {
    json j = r.json();
    std::string message, code;
    if (j.is_object() && j.contains("error")) {
        const json& e = j["error"];
        if (e.is_string()) {
            message = e.get<std::string>();
        } else if (e.is_object()) {
            if (e.contains("message") && e["message"].is_string()) message = e["message"].get<std::string>();
            if (e.contains("code") && e["code"].is_string()) code = e["code"].get<std::string>();
            if (code.empty() && e.contains("type") && e["type"].is_string()) code = e["type"].get<std::string>();
        }
        if (j.contains("detail") && j["detail"].is_string() && message.empty()) message = j["detail"].get<std::string>();
    } else if (j.is_object() && j.contains("message") && j["message"].is_string()) {
        message = j["message"].get<std::string>();
    }
    if (message.empty()) message = r.body.substr(0, 300);
    if (message.empty()) message = "HTTP " + std::to_string(r.status);
    return {message, code};
}

bool says_context_too_long(const std::string& message, const std::string& code) {
    if (code == "context_length_exceeded" || code == "string_above_max_length") return true;
    std::string m = lower(message);
    for (const char* s : {"context length", "context_length", "maximum context", "context window", "too many tokens",
                          "prompt is too long", "exceeds the context"})
        if (m.find(s) != std::string::npos) return true;
    return false;
}

// Retry-After in seconds (possibly fractional) or retry-after-ms; nullopt when absent/unparsable
// (an HTTP-date falls back to the back-off).
std::optional<milliseconds> retry_after(const http::ClientResponse& r) {
    try {
        std::string ms = r.header("retry-after-ms");
        if (!ms.empty()) return milliseconds(static_cast<long long>(std::stod(ms)));
        std::string s = r.header("retry-after");
        if (!s.empty()) {
            std::size_t used = 0;
            double v = std::stod(s, &used);
            if (used == s.size() && v >= 0) return milliseconds(static_cast<long long>(v * 1000));
        }
    } catch (const std::exception&) {}
    return std::nullopt;
}

class OpenAIProvider final : public Provider {
public:
    explicit OpenAIProvider(OpenAIOptions o) : o_(std::move(o)), client_(make_client(o_)) {
        if (!o_.sleep) o_.sleep = [](milliseconds d) { std::this_thread::sleep_for(d); };
        if (o_.max_retries < 0) o_.max_retries = 0;
    }

    std::string name() const override { return "openai-compatible (" + o_.base_url + ")"; }
    std::string model() const override { return o_.model; }

    Result<Completion> complete(const Request& r) override {
        const std::string body = to_openai(r, o_.model, o_.stream).dump();
        const int attempts = o_.max_retries + 1;
        std::string last_detail;
        int last_status = 0;
        bool rate_limited = false;
        bool streamed_some = false;  // pieces of a failed attempt reached on_delta: they are taken back
        for (int attempt = 0; attempt < attempts; ++attempt) {
            std::optional<milliseconds> wait_hint;
            if (streamed_some && r.on_delta) r.on_delta({Delta::Kind::restart, {}, 0, {}, {}});
            streamed_some = false;
            std::optional<Result<Completion>> answer;  // a 2xx read to its end (a completion or a model error)
            auto res = o_.stream ? stream_attempt(r, body, answer, streamed_some)
                                 : client_.request("POST", "/chat/completions", body, {{"Content-Type", "application/json"}});
            if (!res) {
                client_.disconnect();
                last_status = 0;
                rate_limited = false;
                last_detail = res.error().code + ": " + res.error().detail;
            } else {
                const auto& resp = *res;
                last_status = resp.status;
                if (resp.status >= 200 && resp.status < 300) {
                    if (!answer) answer = parse_plain(resp.body);
                    if (*answer) {
                        if ((*answer)->model.empty()) (*answer)->model = o_.model;
                        return std::move(*answer);
                    }
                    if (answer->error().code != "llm_truncated") {
                        Error e = std::move(*answer).error();
                        if (!e.extra.is_object()) e.extra = json::object();
                        e.extra["status"] = resp.status;
                        e.extra["attempts"] = attempt + 1;
                        return e;
                    }
                    last_detail = answer->error().detail;  // cut off mid-answer: retried like a dropped connection
                } else {
                    auto [message, code] = api_error(resp);
                    if (resp.status == 429 || resp.status >= 500) {
                        rate_limited = resp.status == 429;
                        last_detail = "HTTP " + std::to_string(resp.status) + ": " + message;
                        if (resp.status == 429 || resp.status == 503) wait_hint = retry_after(resp);
                    } else {
                        // Other statuses (4xx, unexpected 1xx/3xx): not retried.
                        Error e = says_context_too_long(message, code)
                                      ? Error::make("context_too_long",
                                                    "the conversation exceeds the model's context length: " + message)
                                      : Error::make("llm_error", "the model API refused the request (HTTP " +
                                                                     std::to_string(resp.status) + "): " + message);
                        e.extra = {{"status", resp.status}, {"attempts", attempt + 1}};
                        if (!code.empty()) e.extra["api_code"] = code;
                        return e;
                    }
                }
            }
            if (attempt + 1 >= attempts) break;
            milliseconds wait = wait_hint ? std::min(*wait_hint, kRetryAfterCap) : backoff(attempt);
            log::get("llm")->warn("model call failed ({}), retry {}/{} in {} ms", last_detail, attempt + 1, o_.max_retries,
                                  wait.count());
            o_.sleep(wait);
        }
        if (streamed_some && r.on_delta) r.on_delta({Delta::Kind::restart, {}, 0, {}, {}});
        Error e = rate_limited ? Error::make("llm_rate_limited", "the model API is still rate limiting after " +
                                                                     std::to_string(attempts) + " attempts: " + last_detail)
                               : Error::make("llm_unreachable", "the model API at " + o_.base_url + " failed " +
                                                                    std::to_string(attempts) + " attempts: " + last_detail);
        e.extra = {{"status", last_status}, {"attempts", attempts}};
        return e;
    }

private:
    static Result<Completion> parse_plain(const std::string& body) {
        auto j = parse_json(body, "the model's answer");
        // Not JSON, nested deeper than kMaxJsonDepth, a number out of range: a model error.
        if (!j) return Error::make("llm_bad_response", j.error().detail + "; it begins: " + body.substr(0, 200));
        return from_openai(*j);
    }

    // One streamed attempt. A 2xx leaves its outcome in `answer`: the assembled completion, a model
    // error (a cap, a malformed chunk), or "llm_truncated" when the stream ended before its end. A
    // server that answers plain JSON is read whole, within stream_max_bytes.
    Result<http::ClientResponse> stream_attempt(const Request& r, const std::string& body,
                                                std::optional<Result<Completion>>& answer, bool& streamed_some) {
        StreamLimits limits{o_.stream_max_bytes, o_.stream_max_line, o_.stream_max_tool_calls};
        StreamAssembler assembler(limits, [&](const Delta& d) {
            streamed_some = true;
            if (r.on_delta) r.on_delta(d);
        });
        const auto deadline = std::chrono::steady_clock::now() + o_.stream_max_duration;
        std::optional<bool> event_stream;
        std::string plain;
        auto res = client_.stream(
            "POST", "/chat/completions", body, {{"Content-Type", "application/json"}, {"Accept", "text/event-stream"}},
            [&](const http::ClientResponse& head, std::string_view bytes) {
                if (!event_stream)
                    event_stream = lower(head.header("content-type")).find("text/event-stream") != std::string::npos;
                if (std::chrono::steady_clock::now() > deadline) {
                    answer = Error::make("llm_bad_response", "the model's stream did not end within " +
                                                                 std::to_string(o_.stream_max_duration.count()) +
                                                                 " ms (LLM stream limit)");
                    return false;
                }
                if (!*event_stream) {
                    if (plain.size() + bytes.size() > o_.stream_max_bytes) {
                        answer = Error::make("llm_bad_response",
                                             "the model's answer exceeds " + std::to_string(o_.stream_max_bytes) + " bytes");
                        return false;
                    }
                    plain.append(bytes);
                    return true;
                }
                if (auto s = assembler.feed(bytes); !s) {
                    answer = std::move(s).error();
                    return false;
                }
                return !assembler.done();
            },
            o_.timeout);
        if (!res || res->status < 200 || res->status >= 300 || answer) return res;
        if (!event_stream || !*event_stream) {
            if (res->header("x-engram-truncated").empty())
                answer = parse_plain(plain);
            else
                answer = Error::make("llm_truncated", "the model's answer was cut off");
        } else if (auto s = assembler.end(); !s) {
            answer = std::move(s).error();
        } else if (!assembler.done() && !assembler.finished()) {
            answer = Error::make("llm_truncated", "the model's stream ended before its end ([DONE] or a finish_reason)");
        } else {
            answer = assembler.finish();
        }
        return res;
    }

    static http::Client make_client(const OpenAIOptions& o) {
        http::ClientOptions co;
        co.timeout = o.timeout;
        co.verify_tls = o.verify_tls;
        if (!o.api_key.empty()) co.default_headers.emplace_back("Authorization", "Bearer " + o.api_key);
        std::string base = o.base_url;
        while (!base.empty() && base.back() == '/') base.pop_back();
        return http::Client(base, co);
    }

    milliseconds backoff(int attempt) const {
        milliseconds d = o_.backoff;
        for (int i = 0; i < attempt && d < kBackoffCap; ++i) d *= 2;
        return std::min(d, kBackoffCap);
    }

    OpenAIOptions o_;
    http::Client client_;
};

}  // namespace

std::unique_ptr<Provider> make_openai(OpenAIOptions o) { return std::make_unique<OpenAIProvider>(std::move(o)); }

}  // namespace engram::llm
