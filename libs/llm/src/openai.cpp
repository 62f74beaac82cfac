// OpenAI-compatible chat-completions provider with retries and back-off.
#include <algorithm>
#include <cctype>
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
        const std::string body = to_openai(r, o_.model).dump();
        const int attempts = o_.max_retries + 1;
        std::string last_detail;
        int last_status = 0;
        bool rate_limited = false;
        for (int attempt = 0; attempt < attempts; ++attempt) {
            std::optional<milliseconds> wait_hint;
            auto res = client_.request("POST", "/chat/completions", body, {{"Content-Type", "application/json"}});
            if (!res) {
                client_.disconnect();
                last_status = 0;
                rate_limited = false;
                last_detail = res.error().code + ": " + res.error().detail;
            } else {
                const auto& resp = *res;
                last_status = resp.status;
                if (resp.status >= 200 && resp.status < 300) {
                    auto j = parse_json(resp.body, "the model's answer");
                    if (!j) {
                        // Not JSON, nested deeper than kMaxJsonDepth, a number out of range: a model error.
                        Error e = Error::make("llm_bad_response", j.error().detail + "; it begins: " + resp.body.substr(0, 200));
                        e.extra = {{"status", resp.status}, {"attempts", attempt + 1}};
                        return e;
                    }
                    auto c = from_openai(*j);
                    if (c && c->model.empty()) c->model = o_.model;
                    return c;
                }
                auto [message, code] = api_error(resp);
                if (resp.status == 429 || resp.status >= 500) {
                    rate_limited = resp.status == 429;
                    last_detail = "HTTP " + std::to_string(resp.status) + ": " + message;
                    if (resp.status == 429 || resp.status == 503) wait_hint = retry_after(resp);
                } else {
                    // Other statuses (4xx, unexpected 1xx/3xx): not retried.
                    Error e =
                        says_context_too_long(message, code)
                            ? Error::make("context_too_long", "the conversation exceeds the model's context length: " + message)
                            : Error::make("llm_error", "the model API refused the request (HTTP " + std::to_string(resp.status) +
                                                           "): " + message);
                    e.extra = {{"status", resp.status}, {"attempts", attempt + 1}};
                    if (!code.empty()) e.extra["api_code"] = code;
                    return e;
                }
            }
            if (attempt + 1 >= attempts) break;
            milliseconds wait = wait_hint ? std::min(*wait_hint, kRetryAfterCap) : backoff(attempt);
            log::get("llm")->warn("model call failed ({}), retry {}/{} in {} ms", last_detail, attempt + 1, o_.max_retries,
                                  wait.count());
            o_.sleep(wait);
        }
        Error e = rate_limited ? Error::make("llm_rate_limited", "the model API is still rate limiting after " +
                                                                     std::to_string(attempts) + " attempts: " + last_detail)
                               : Error::make("llm_unreachable", "the model API at " + o_.base_url + " failed " +
                                                                    std::to_string(attempts) + " attempts: " + last_detail);
        e.extra = {{"status", last_status}, {"attempts", attempts}};
        return e;
    }

private:
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
