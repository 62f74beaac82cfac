#pragma once
// A child process under test (a service binary): started at construction with the current
// environment plus `env`, stdout and stderr appended to `log_path`, stdin from /dev/null, no file
// descriptors of the test process inherited. If the test process dies without running the
// destructor (crash, ctest timeout), a small watchdog shell kills the child.
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace engram::testing {

class Watchdog;

class Process {
public:
    // argv[0] is looked up in PATH when it has no '/'. Throws std::runtime_error when the
    // process cannot be started (exec failure shows up as exit code 127 and a line in the log).
    Process(std::vector<std::string> argv, std::map<std::string, std::string> env, std::string log_path);
    ~Process();  // terminate_and_wait(): SIGTERM, then SIGKILL after the grace period
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    int pid() const { return pid_; }
    // True while the child runs (reaps it once it has exited).
    bool alive();
    // SIGKILL, then reap; returns the exit code (128 + 9).
    int kill9();
    // SIGTERM, wait up to `grace`, then SIGKILL; returns the exit code: the process's own exit
    // status, or 128 + signal number when a signal ended it.
    int terminate_and_wait(std::chrono::milliseconds grace = std::chrono::seconds(10));
    // Blocks until the child exits; returns the exit code as above.
    int wait();
    // Exit code once exited, nullopt while running.
    std::optional<int> exit_code();
    // The log file contents so far, for failure messages.
    std::string log() const;
    const std::string& log_path() const { return log_path_; }

private:
    bool reap(bool block);

    std::vector<std::string> argv_;
    std::string log_path_;
    int pid_ = -1;
    std::mutex mu_;
    std::optional<int> exit_code_;
    std::unique_ptr<Watchdog> watchdog_;
};

// Runs a command to completion and returns its exit code and output (stdout and stderr together):
// a client from another stack (curl, python3) talking to a service under test. `env` is added to the
// current environment. Throws when the command cannot be started.
struct Ran {
    int exit_code = -1;
    std::string output;
};
Ran run(std::vector<std::string> argv, std::map<std::string, std::string> env = {},
        std::chrono::milliseconds timeout = std::chrono::seconds(60));

}  // namespace engram::testing
