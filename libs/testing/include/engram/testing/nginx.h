#pragma once
// nginx as a reverse proxy on a free 127.0.0.1 port in front of one upstream, with its own config,
// prefix and temp folders in a throwaway directory (daemon off, one process, removed at the end).
// Ordinary answers are buffered by nginx as it ships; event streams (/events/stream, and any answer
// with `X-Accel-Buffering: no`) pass unbuffered; upstream connections are kept alive (HTTP/1.1).
//
// Binary: $ENGRAM_NGINX, else nginx from PATH or /usr/sbin (Debian package `nginx`).
// Threading: construct and destroy on the test thread.
#include <memory>
#include <string>

namespace engram::testing {

class Process;
class Watchdog;

class Nginx {
public:
    // `upstream` is "http://127.0.0.1:<port>" (loopback only). Waits until nginx accepts connections;
    // throws std::runtime_error (with its error log) when it does not start.
    explicit Nginx(const std::string& upstream);
    ~Nginx();
    Nginx(const Nginx&) = delete;
    Nginx& operator=(const Nginx&) = delete;

    std::string url() const;  // http://127.0.0.1:<port>
    int port() const { return port_; }
    std::string error_log() const;
    std::string access_log() const;  // one line per request: <status> "<request line>" upstream=<status>
    // Lines of the access log containing `needle`. nginx writes a line once it has sent the answer, so
    // a client may see the answer a moment before its line: poll with eventually().
    std::size_t count(const std::string& needle) const;

private:
    std::string dir_;
    int port_ = 0;
    std::unique_ptr<Process> proc_;
    std::unique_ptr<Watchdog> watchdog_;  // removes dir_ if the test process dies first
};

}  // namespace engram::testing
