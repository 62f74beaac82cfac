#include "webchat_limits.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace engram::gateway {

using std::chrono::steady_clock;

RateLimiter::RateLimiter(double per_minute, double burst, std::size_t max_keys, SteadyNow now)
    : per_minute_(per_minute), burst_(std::max(1.0, burst)), max_keys_(max_keys), now_(std::move(now)) {
    if (!now_) now_ = [] { return steady_clock::now(); };
}

double RateLimiter::refill(Bucket& b, steady_clock::time_point now) const {
    double minutes = std::chrono::duration<double, std::ratio<60>>(now - b.at).count();
    if (minutes > 0) b.tokens = std::min(burst_, b.tokens + minutes * per_minute_);
    b.at = std::max(b.at, now);
    return b.tokens;
}

void RateLimiter::prune_locked(steady_clock::time_point now) {
    // A full bucket carries nothing a fresh one would not: drop it. At most once a second, so a
    // flood of new keys against a full map does not make every request walk the whole map.
    if (last_prune_ && now - *last_prune_ < std::chrono::seconds(1)) return;
    last_prune_ = now;
    for (auto it = buckets_.begin(); it != buckets_.end();) {
        if (refill(it->second, now) >= burst_)
            it = buckets_.erase(it);
        else
            ++it;
    }
}

std::optional<std::chrono::seconds> RateLimiter::take(const std::string& key) {
    if (per_minute_ <= 0) return std::nullopt;
    std::lock_guard lk(mu_);
    const auto now = now_();
    auto it = buckets_.find(key);
    if (it == buckets_.end()) {
        if (buckets_.size() >= max_keys_) prune_locked(now);
        if (buckets_.size() >= max_keys_) return std::chrono::seconds(5);  // fail closed: memory stays bounded
        it = buckets_.emplace(key, Bucket{burst_, now}).first;
    }
    auto& b = it->second;
    if (refill(b, now) >= 1.0) {
        b.tokens -= 1.0;
        return std::nullopt;
    }
    double wait_s = (1.0 - b.tokens) * 60.0 / per_minute_;
    return std::chrono::seconds(std::max<long long>(1, static_cast<long long>(std::ceil(wait_s))));
}

std::size_t RateLimiter::size() const {
    std::lock_guard lk(mu_);
    return buckets_.size();
}

bool StreamCounter::acquire(const std::string& key) {
    std::lock_guard lk(mu_);
    auto& n = open_[key];
    if (per_key_ > 0 && n >= per_key_) {
        if (n == 0) open_.erase(key);
        return false;
    }
    ++n;
    return true;
}

void StreamCounter::release(const std::string& key) {
    std::lock_guard lk(mu_);
    auto it = open_.find(key);
    if (it == open_.end()) return;
    if (--it->second == 0) open_.erase(it);
}

std::size_t StreamCounter::open(const std::string& key) const {
    std::lock_guard lk(mu_);
    auto it = open_.find(key);
    return it == open_.end() ? 0 : it->second;
}

std::size_t StreamCounter::keys() const {
    std::lock_guard lk(mu_);
    return open_.size();
}

std::string address_key(const std::string& remote) {
    auto colon = remote.rfind(':');
    std::string ip = colon == std::string::npos ? remote : remote.substr(0, colon);
    if (ip.size() > 2 && ip.front() == '[' && ip.back() == ']') ip = ip.substr(1, ip.size() - 2);
    in6_addr a6{};
    if (ip.find(':') != std::string::npos && inet_pton(AF_INET6, ip.c_str(), &a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            char buf[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &a6.s6_addr[12], buf, sizeof buf);
            return buf;
        }
        char buf[32];
        std::snprintf(buf, sizeof buf, "%02x%02x:%02x%02x:%02x%02x:%02x%02x::/64", a6.s6_addr[0], a6.s6_addr[1], a6.s6_addr[2],
                      a6.s6_addr[3], a6.s6_addr[4], a6.s6_addr[5], a6.s6_addr[6], a6.s6_addr[7]);
        return buf;
    }
    return ip;
}

}  // namespace engram::gateway
