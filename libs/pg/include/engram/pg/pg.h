#pragma once
// PostgreSQL access: connecting, telling "the database is gone" apart from other errors, and a
// small connection pool for concurrent readers.
#include "engram/core/result.h"

#include <pqxx/pqxx>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace engram::pg {

// True when the exception means the connection is unusable (server down, restarted, network):
// the caller answers 503 and reconnects later, instead of treating it as a bug.
bool is_connection_error(const std::exception& e);

Error unavailable(const std::exception& e);

Result<std::unique_ptr<pqxx::connection>> connect(const std::string& url);

// The deployment-wide settings every service must agree on (table engram_settings, created if
// missing): records `value` under `key` unless a value is there already, and returns the recorded
// one (under a transaction advisory lock, so concurrent first starts agree).
std::string record_setting(pqxx::connection& c, const std::string& key, const std::string& value);

// Cuts a connection whose call runs past its deadline. A blocking libpq call waits as long as the
// server does: a frozen or partitioned primary, or a primary whose synchronous standby is gone (its
// commits wait for one, for ever), would hang the caller, and statement_timeout cannot help since
// the server enforces it. On expiry the socket is shut down (not closed, so the descriptor cannot be
// reused under libpq): the blocked call fails as a broken connection and the owner discards the
// connection as after any connection error. One thread serves every guard.
class Watchdog {
public:
    Watchdog();
    ~Watchdog();
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

    class Guard {
    public:
        Guard() = default;
        Guard(Guard&& o) noexcept : w_(o.w_), id_(o.id_) { o.w_ = nullptr; }
        Guard& operator=(Guard&&) = delete;
        ~Guard();
        // True when the deadline passed and the connection was cut (meaningful after the call).
        bool fired() const;

    private:
        friend class Watchdog;
        Guard(Watchdog* w, std::uint64_t id) : w_(w), id_(id) {}
        Watchdog* w_ = nullptr;
        std::uint64_t id_ = 0;
    };

    // Until the guard is destroyed (which must happen before the connection is closed), cuts `c` if
    // `timeout` passes. A zero timeout arms nothing.
    Guard arm(pqxx::connection& c, std::chrono::milliseconds timeout);

private:
    struct State;
    std::unique_ptr<State> s_;
};

// A bounded pool. acquire() blocks while all connections are leased; a lease whose connection
// broke is discarded on return, so the next acquire() reconnects: recovery after a database
// restart needs nothing from the caller.
class Pool {
public:
    Pool(std::string url, std::size_t max_size);
    ~Pool();

    class Lease {
    public:
        Lease(Pool* p, std::unique_ptr<pqxx::connection> c) : pool_(p), c_(std::move(c)) {}
        Lease(Lease&&) = default;
        Lease& operator=(Lease&&) = default;
        ~Lease();
        pqxx::connection& operator*() { return *c_; }
        pqxx::connection* operator->() { return c_.get(); }
        void mark_broken() { broken_ = true; }

    private:
        Pool* pool_;
        std::unique_ptr<pqxx::connection> c_;
        bool broken_ = false;
    };

    Result<Lease> acquire();

    // Runs fn(pqxx::connection&) with a leased connection; connection failures become an
    // `unavailable` Error, other exceptions propagate.
    template <class F>
    auto run(F&& fn) -> Result<decltype(fn(std::declval<pqxx::connection&>()))> {
        auto lease = acquire();
        if (!lease) return std::move(lease).error();
        try {
            return fn(**lease);
        } catch (const std::exception& e) {
            if (!is_connection_error(e)) throw;
            lease->mark_broken();
            return unavailable(e);
        }
    }

private:
    void give_back(std::unique_ptr<pqxx::connection> c, bool broken);
    std::string url_;
    std::size_t max_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::unique_ptr<pqxx::connection>> idle_;
    std::size_t leased_ = 0;
};

}  // namespace engram::pg
