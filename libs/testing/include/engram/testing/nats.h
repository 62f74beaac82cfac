#pragma once
// A `nats-server -js` on a free 127.0.0.1 port with its own JetStream store directory
// (<temp_base()>/engram-nats-XXXXXX, see util.h). stop()/start() keep the port and the store, so JetStream data
// survives a restart. The server is killed and the directory removed in the destructor (for
// shared(): at normal process exit); if the process dies without that, a watchdog shell does it.
//
// Binary: $ENGRAM_NATS_SERVER, else nats-server from PATH.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace engram::testing {

class Process;
class Watchdog;

// Configured like the run command's server: a token every client must present (in url()), and an
// 8 MiB max_payload, so that every event the store accepts is publishable.
struct NatsOptions {
    bool auth = true;                            // a random token; url() carries it
    std::int64_t max_payload = 8 * 1024 * 1024;  // 0 = the server's default (1 MiB)
    std::vector<std::string> extra_args;
};

class Nats {
public:
    Nats();  // starts the server and waits until it accepts clients with JetStream on; throws
    explicit Nats(NatsOptions options);
    ~Nats();
    Nats(const Nats&) = delete;
    Nats& operator=(const Nats&) = delete;

    static Nats& shared();

    std::string url() const;                // nats://<token>@127.0.0.1:<port> (no token without auth)
    std::string url_without_token() const;  // nats://127.0.0.1:<port>
    const std::string& token() const { return token_; }
    int port() const { return port_; }
    // hard = false: SIGTERM (clean shutdown, JetStream flushed); hard = true: SIGKILL (a crash).
    void stop(bool hard = false);
    // Starts again on the same port and store; waits until ready. No-op when running.
    void start();
    bool running() const;
    const std::string& dir() const { return dir_; }
    std::string log() const;

private:
    bool try_start();

    NatsOptions options_;
    std::string token_;
    std::string bin_;
    std::string dir_;
    int port_ = 0;
    std::unique_ptr<Process> proc_;
    std::unique_ptr<Watchdog> watchdog_;
};

// Three nats-servers forming a JetStream cluster on loopback (distinct ports, server names n0..n2
// and store folders), no auth, 8 MiB max_payload. url() lists all three, for a comma-separated
// NATS_URL. Killed and removed in the destructor.
class NatsCluster {
public:
    NatsCluster();  // starts the servers; the cluster elects its meta leader shortly after
    ~NatsCluster();
    NatsCluster(const NatsCluster&) = delete;
    NatsCluster& operator=(const NatsCluster&) = delete;

    std::string url() const;  // nats://127.0.0.1:a,nats://127.0.0.1:b,nats://127.0.0.1:c
    // kill -9 the server named `server_name` ("n0".."n2", as JetStream reports leaders); start it
    // again on the same ports and store.
    void kill(const std::string& server_name);
    void start(const std::string& server_name);
    const std::string& dir() const { return dir_; }
    std::string logs() const;  // the tail of each server's log, for failure messages

private:
    std::string dir_;
    std::vector<int> client_, route_;
    std::vector<std::unique_ptr<Process>> servers_;
    std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace engram::testing
