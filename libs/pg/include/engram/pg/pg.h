#pragma once
// PostgreSQL access: connecting, telling "the database is gone" apart from other errors, and a
// small connection pool for concurrent readers.
#include "engram/core/result.h"

#include <pqxx/pqxx>

#include <condition_variable>
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
