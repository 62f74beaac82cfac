#include "rate_limit.h"

#include <algorithm>

namespace engram::notification {

using namespace std::chrono;

Clock steady_clock() {
    return [] { return std::chrono::steady_clock::now(); };
}

TokenBucket::TokenBucket(double rate, double burst, steady_clock::time_point now)
    : rate_(rate > 0 ? rate : 1e-9), burst_(std::max(burst, 1.0)), tokens_(burst_), last_(now) {}

void TokenBucket::refill(steady_clock::time_point now) {
    if (now > last_) {
        tokens_ = std::min(burst_, tokens_ + duration<double>(now - last_).count() * rate_);
        last_ = now;
    }
}

nanoseconds TokenBucket::reserve(steady_clock::time_point now) {
    refill(now);
    tokens_ -= 1.0;
    if (tokens_ >= 0) return nanoseconds{0};
    return duration_cast<nanoseconds>(duration<double>(-tokens_ / rate_));
}

void TokenBucket::block_until(steady_clock::time_point until, steady_clock::time_point now) {
    refill(now);
    if (until <= now) return;
    // A reservation now must wait (until - now): the balance after taking one token is -(wait * rate).
    double needed = 1.0 - duration<double>(until - now).count() * rate_;
    tokens_ = std::min(tokens_, needed);
}

bool TokenBucket::idle(steady_clock::time_point now) {
    refill(now);
    return tokens_ >= burst_;
}

RateLimiter::RateLimiter(RateLimits limits, Clock clock)
    : limits_(limits), clock_(std::move(clock)), global_(limits.global_rate, limits.global_burst, clock_()) {}

nanoseconds RateLimiter::reserve(const std::string& chat) {
    std::lock_guard lk(mu_);
    auto now = clock_();
    if (chats_.size() > 10000)
        for (auto it = chats_.begin(); it != chats_.end();) it = it->second.idle(now) ? chats_.erase(it) : std::next(it);
    auto it = chats_.try_emplace(chat, limits_.per_chat_rate, limits_.per_chat_burst, now).first;
    auto a = it->second.reserve(now);
    auto b = global_.reserve(now);
    return std::max(a, b);
}

void RateLimiter::penalize(const std::string& chat, nanoseconds d) {
    std::lock_guard lk(mu_);
    auto now = clock_();
    auto it = chats_.try_emplace(chat, limits_.per_chat_rate, limits_.per_chat_burst, now).first;
    it->second.block_until(now + d, now);
}

std::size_t RateLimiter::tracked_chats() const {
    std::lock_guard lk(mu_);
    return chats_.size();
}

}  // namespace engram::notification
