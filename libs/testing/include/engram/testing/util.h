#pragma once
// Small helpers for integration tests.
#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace engram::testing {

// A currently free 127.0.0.1 TCP port (bind port 0, read it back, close). Another process may
// take it before the caller binds it: callers that start servers retry on a bind failure.
int free_port();

// Polls `pred` every few milliseconds until it returns true or `timeout` passes; returns pred's
// final value (it is evaluated once more at the deadline).
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// True once something accepts TCP connections on 127.0.0.1:port (polled), false after `timeout`.
bool wait_for_port(int port, std::chrono::milliseconds timeout = std::chrono::seconds(20));

// CMAKE_BINARY_DIR of the build the tests belong to, to find the service binaries under test.
std::string build_dir();
// CMAKE_SOURCE_DIR of that build, to find scripts the tests run (tests/fakes/*.py).
std::string source_dir();

// The whole contents of a file ("" when it cannot be read), and its last `max_bytes` bytes.
std::string read_file(const std::string& path);
std::string tail_file(const std::string& path, std::size_t max_bytes = 4000);

// Where the harness puts its throwaway directories: $ENGRAM_TEST_TMPDIR when set; else /dev/shm
// when it is a writable tmpfs with at least 2 GiB free (creating PostgreSQL's ~1000 files is 10-20x
// faster there than on a disk); else /tmp.
std::string temp_base();

// A fresh empty directory <base or temp_base()>/<prefix>-XXXXXX (mode 0700); throws on failure.
std::string make_temp_dir(const std::string& prefix, const std::string& base = "");

// The pids of the running processes whose parent is `pid` (read from /proc/<n>/stat).
std::vector<int> child_pids(int pid);

}  // namespace engram::testing
