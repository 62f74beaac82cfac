#pragma once
// tests/fakes/py_http_fake.py (Python's standard http.server, scripted with canned routes) as a child
// process on a free 127.0.0.1 port: a server that is not ours, for the HTTP clients' tests. It frames
// answers the way real servers do (header and body in separate segments, chunked bodies in several
// chunks, bodies delimited by the connection closing); see the script for the route format and modes.
//
// Threading: construct and destroy on the test thread; the other members may be called anywhere.
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace engram::testing {

class Process;
class Watchdog;

class PyHttpFake {
public:
    // Starts the script with `routes` (a JSON array of routes) and waits until it accepts connections;
    // throws std::runtime_error (with its log) when it does not start.
    explicit PyHttpFake(const nlohmann::json& routes = nlohmann::json::array());
    ~PyHttpFake();
    PyHttpFake(const PyHttpFake&) = delete;
    PyHttpFake& operator=(const PyHttpFake&) = delete;

    std::string url() const;  // http://127.0.0.1:<port>
    int port() const { return port_; }

    void set_routes(const nlohmann::json& routes);  // replaces every route
    void push(const nlohmann::json& route);         // a one-shot answer, used before the routes
    // Every request received, in order: {method, path, query, headers (lower-case), body, connection}.
    std::vector<nlohmann::json> requests() const;
    std::size_t connections() const;  // TCP connections accepted so far
    void reset();                     // forgets the requests
    std::string log() const;

private:
    nlohmann::json control(const std::string& method, const std::string& path, const std::string& body = "") const;

    std::string dir_;
    int port_ = 0;
    std::unique_ptr<Process> proc_;
    std::unique_ptr<Watchdog> watchdog_;  // removes dir_ if the test process dies first
};

}  // namespace engram::testing
