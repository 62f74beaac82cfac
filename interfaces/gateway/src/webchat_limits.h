#pragma once
// The web chat's caps: how many messages a session and an address may post (token buckets), and how
// many event streams they may hold open. Anyone who reaches the gateway gets a session cookie by
// loading the page, so every map here is keyed by what a stranger controls (a cookie, an address)
// and is bounded: a stranger rotating cookies or addresses cannot grow it without limit.
//
// Thread-safe (one mutex each); the clock is injected so tests need not wait.
#include <chrono>
#include <cstddef>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace engram::gateway {

using SteadyNow = std::function<std::chrono::steady_clock::time_point()>;

// A token bucket per key: `per_minute` tokens a minute, at most `burst` saved up.
class RateLimiter {
public:
    RateLimiter(double per_minute, double burst, std::size_t max_keys, SteadyNow now = nullptr);

    // Takes a token for `key`; when none is left, the whole seconds until one is (at least 1).
    // A key not yet known while `max_keys` keys are busy (not back to a full bucket) is refused too.
    std::optional<std::chrono::seconds> take(const std::string& key);
    std::size_t size() const;
    bool enabled() const { return per_minute_ > 0; }

private:
    struct Bucket {
        double tokens;
        std::chrono::steady_clock::time_point at;
    };
    double refill(Bucket& b, std::chrono::steady_clock::time_point now) const;
    void prune_locked(std::chrono::steady_clock::time_point now);

    mutable std::mutex mu_;
    double per_minute_, burst_;
    std::size_t max_keys_;
    SteadyNow now_;
    std::unordered_map<std::string, Bucket> buckets_;
    std::optional<std::chrono::steady_clock::time_point> last_prune_;
};

// Open streams per key, at most `per_key` each (0 = no cap). An entry exists only while its count
// is above zero, so the map holds at most as many keys as there are open streams.
class StreamCounter {
public:
    explicit StreamCounter(std::size_t per_key) : per_key_(per_key) {}
    bool acquire(const std::string& key);
    void release(const std::string& key);
    std::size_t open(const std::string& key) const;
    std::size_t keys() const;

private:
    mutable std::mutex mu_;
    std::size_t per_key_;
    std::unordered_map<std::string, std::size_t> open_;
};

// The key of a peer address ("ip:port" from http::Request::remote) for the per-address caps: the IPv4
// address, or the /64 of an IPv6 one (one subscriber usually holds a whole /64).
std::string address_key(const std::string& remote);

}  // namespace engram::gateway
