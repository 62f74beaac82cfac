#pragma once
// Token buckets for Telegram's limits: about one message per second per chat and thirty per second
// overall. Thread-safe; the clock is injectable so tests need not sleep.
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <string>

namespace engram::notification {

using Clock = std::function<std::chrono::steady_clock::time_point()>;
Clock steady_clock();

// A token bucket holding at most `burst` tokens, refilled at `rate` tokens per second. reserve()
// always takes a token, letting the balance go negative: the answer is how long the caller must wait
// before acting (0 = now). Callers that wait the answered time are spaced at `rate` per second.
class TokenBucket {
public:
    TokenBucket(double rate, double burst, std::chrono::steady_clock::time_point now);
    std::chrono::nanoseconds reserve(std::chrono::steady_clock::time_point now);
    // Nobody may act before `until` (e.g. Telegram's retry_after): the balance is set so that the
    // next reservation waits at least until then.
    void block_until(std::chrono::steady_clock::time_point until, std::chrono::steady_clock::time_point now);
    bool idle(std::chrono::steady_clock::time_point now);  // full again (can be forgotten)

private:
    void refill(std::chrono::steady_clock::time_point now);
    double rate_, burst_, tokens_;
    std::chrono::steady_clock::time_point last_;
};

struct RateLimits {
    double per_chat_rate = 1.0;  // messages per second per chat
    double per_chat_burst = 1.0;
    double global_rate = 30.0;  // messages per second overall
    double global_burst = 30.0;
};

class RateLimiter {
public:
    explicit RateLimiter(RateLimits limits = {}, Clock clock = steady_clock());
    // Reserves one message to `chat` in both buckets; returns how long to wait before sending it.
    std::chrono::nanoseconds reserve(const std::string& chat);
    // Telegram answered 429 with retry_after for `chat`: no message to it before now + d.
    void penalize(const std::string& chat, std::chrono::nanoseconds d);
    std::size_t tracked_chats() const;

private:
    RateLimits limits_;
    Clock clock_;
    mutable std::mutex mu_;
    TokenBucket global_;
    std::map<std::string, TokenBucket> chats_;
};

}  // namespace engram::notification
