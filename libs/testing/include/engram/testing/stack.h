#pragma once
// The base of every test that needs the real event store: a nats-server, a fresh database and the
// engram-event-store binary on them, ready to serve; plus starting other engram binaries against it
// and reading what was stored.
#include "engram/testing/nats.h"
#include "engram/testing/process.h"

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace engram::testing {

class Stack {
public:
    // `name` prefixes the log folder; `store_env` is added to the store's environment.
    explicit Stack(const std::string& name = "stack", std::map<std::string, std::string> store_env = {});
    ~Stack();
    Stack(const Stack&) = delete;
    Stack& operator=(const Stack&) = delete;

    Nats& nats() { return nats_; }
    const Nats& nats() const { return nats_; }
    const std::string& db() const { return db_; }
    std::string url() const;                         // the store, http://127.0.0.1:<port>
    const std::string& dir() const { return dir_; }  // logs of everything started here
    Process& store() { return *store_; }
    // kill -9 the store (appends then fail: "the database/store is down" tests), and start it again
    // on the same database and port, waiting until it is ready.
    void kill_store();
    void start_store();

    // Starts <build dir>/<relative_binary> with DATABASE_URL, NATS_URL, EVENT_STORE_URL, LOG_LEVEL=info
    // and `env` on top, logging to dir()/<log_name or the binary's name>-N.log.
    std::unique_ptr<Process> start(const std::string& relative_binary, const std::map<std::string, std::string>& env = {},
                                   const std::string& log_name = "");

    // An aggregate's events from the store, in version order (empty when unreachable).
    std::vector<nlohmann::json> aggregate(const std::string& aggregate_id);
    // Stored events of a type (and aggregate, when given), counted in the database.
    std::int64_t count(const std::string& type, const std::string& aggregate_id = "");
    std::int64_t count_all();

private:
    Nats nats_;
    std::string db_;
    int port_ = 0;
    std::string dir_;
    std::map<std::string, std::string> store_env_;
    std::unique_ptr<Process> store_;
    int started_ = 0;
};

}  // namespace engram::testing
