#pragma once
// Process plumbing shared by the harness pieces (not part of the public API).
#include <optional>
#include <string>
#include <vector>

namespace engram::testing {

// A `sh` that waits on a pipe whose write end only this process holds (close-on-exec). When the
// test process exits without disarming it (crash, abort, SIGKILL from a ctest timeout), the pipe
// reaches end-of-file and the shell runs `cleanup` (e.g. stop a server, remove its directory).
// The watchdog runs in its own session so a terminal's Ctrl-C does not kill it first.
class Watchdog {
public:
    explicit Watchdog(const std::string& cleanup);
    ~Watchdog();  // disarm()
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;
    // Tells the shell to exit without cleaning up, and reaps it.
    void disarm();

private:
    int fd_ = -1;
    int pid_ = -1;
};

struct SpawnSpec {
    std::vector<std::string> argv;                // argv[0] searched in PATH when it has no '/'
    std::optional<std::vector<std::string>> env;  // "K=V" entries; nullopt = inherit
    std::string cwd;                              // "" = inherit
    int stdin_fd = -1;                            // -1 = /dev/null
    int out_fd = -1;                              // stdout+stderr; -1 = /dev/null
    bool new_session = false;
};

// fork + exec with only fds 0..2 open in the child and default signal dispositions.
// Returns the child's pid; throws std::runtime_error when fork fails. An exec failure makes the
// child write a line to its stdout/stderr and exit with 127.
int spawn(const SpawnSpec& spec);

// Blocks until `pid` exits; returns its exit code (128 + signal when killed by a signal).
int wait_exit(int pid);
int exit_code_from_status(int status);

// Runs a command to completion with output appended to `out_path`; returns the exit code.
int run_command(const std::vector<std::string>& argv, const std::string& cwd, const std::string& out_path);

// argv prefixed with `runuser -u postgres --` when running as root (PostgreSQL refuses root).
std::vector<std::string> as_postgres(std::vector<std::string> argv);
bool is_root();
// chown -R path to the postgres user (root only; no-op otherwise). Throws on failure.
void chown_to_postgres(const std::string& path);

// Single-quotes a string for sh.
std::string shell_quote(const std::string& s);
// Full path of an executable found in PATH (or the extra dirs), "" when absent.
std::string which(const std::string& name, const std::vector<std::string>& extra_dirs = {});

// Ignores SIGPIPE in the test process once (writing to a dead child's pipe must not kill it).
void ignore_sigpipe_once();

}  // namespace engram::testing
