#pragma once
// A throwaway PostgreSQL cluster for one test process.
//
// The cluster is a copy of a cached initdb template (built once per machine, PostgreSQL binary and
// user: <temp_base()>/engram-pgtemplate-*), placed in a fresh <temp_base()>/engram-pg-XXXXXX
// directory (temp_base(): /dev/shm when it is a big enough tmpfs, else /tmp; see util.h) and
// started on a free 127.0.0.1 port with trust authentication for user `postgres`. As root, every
// PostgreSQL binary runs as the `postgres` user (runuser) and the directory is owned by it.
// The cluster is stopped and its directory removed when the object is destroyed (for shared():
// at normal process exit); if the process dies without that, a watchdog shell does it.
//
// Binaries: $ENGRAM_PG_BIN (a directory holding initdb, pg_ctl, postgres), else the highest
// /usr/lib/postgresql/<version>/bin, else PATH.
#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace engram::testing {

class Watchdog;

struct PostgresOptions {
    // A constructor rather than an aggregate, so callers can leave out trailing fields without
    // -Wmissing-field-initializers: PostgresOptions{true, {"shared_buffers=256MB"}}.
    PostgresOptions(bool fsync_ = false, std::vector<std::string> settings_ = {}, std::string base_dir_ = {})
        : fsync(fsync_), settings(std::move(settings_)), base_dir(std::move(base_dir_)) {}

    // fsync=off makes commits cheap; a PostgreSQL crash (stop(StopMode::immediate)) still loses
    // no committed transaction, only an operating-system crash would. Set true for tests that
    // measure realistic durability costs.
    bool fsync = false;
    // Extra `name=value` server settings, passed as `-c name=value` (after the harness's own, so
    // they win: e.g. "max_connections=300").
    std::vector<std::string> settings;
    // Parent folder of the cluster directory; "" = temp_base() (tmpfs when available). Set e.g.
    // "/tmp" for benchmarks that should pay real disk costs (with fsync = true).
    std::string base_dir;
};

enum class StopMode { fast, immediate };

class Postgres {
public:
    explicit Postgres(PostgresOptions options = {});  // creates and starts the cluster; throws on failure
    ~Postgres();

    // A streaming-replication standby of `primary` (pg_basebackup -R from its running server), started
    // on its own port. For failover tests give both clusters "full_page_writes=on" and
    // "wal_log_hints=on" (pg_rewind needs them) and the same synchronous_standby_names.
    static std::unique_ptr<Postgres> standby_of(const Postgres& primary, PostgresOptions options = {});
    // A machine death: SIGKILL to the postmaster and every child at once (no shutdown checkpoint, the
    // clients' connections reset).
    void kill();
    // pg_ctl promote: a standby becomes a primary on a new timeline (waits until it accepts writes).
    void promote();
    // A dead former primary comes back as a standby of the new one: pg_rewind (which runs crash
    // recovery first) from `primary`'s server, recovery configuration written (-R), started.
    void rejoin_as_standby_of(const Postgres& primary);
    // A standby streams to this primary and counts as synchronous (false when unreachable).
    bool has_sync_standby() const;
    // postgresql://postgres@127.0.0.1:<a>,127.0.0.1:<b>/<db>?target_session_attrs=read-write: libpq's own
    // failover between the given clusters.
    static std::string multi_host_url(const std::vector<const Postgres*>& clusters, const std::string& db = "postgres");
    Postgres(const Postgres&) = delete;
    Postgres& operator=(const Postgres&) = delete;

    // One per test process, created on first use (fsync off).
    static Postgres& shared();

    // postgresql://postgres@127.0.0.1:<port>/<db>
    std::string url(const std::string& db = "postgres") const;
    // A fresh empty database with a unique name; returns its URL.
    std::string create_database();
    // pg_ctl stop (-m fast or -m immediate, the latter is a crash: recovery runs at next start).
    void stop(StopMode mode = StopMode::fast);
    // Starts again on the same port and waits until it accepts connections. No-op when running.
    void start();
    bool running() const { return running_; }
    int port() const { return port_; }
    const std::string& dir() const { return dir_; }
    // The server log so far, for failure messages.
    std::string log() const;

private:
    Postgres(PostgresOptions options, const Postgres* primary);
    bool try_start();

    PostgresOptions options_;
    std::string bin_;
    std::string dir_;
    std::string data_;
    int port_ = 0;
    bool running_ = false;
    std::atomic<int> db_counter_{0};
    std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace engram::testing
