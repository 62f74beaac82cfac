#pragma once
// Clients from another HTTP stack, so a service is not only ever tested by our own client (its
// framing, its header handling): Python's http.client, run as a child process.
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace engram::testing {

// One request to 127.0.0.1:<port> with exactly these headers (a Host given here replaces the real
// one). Returns {"status", "headers" (lower-case names), "set_cookie": [every Set-Cookie], "body"}.
// Throws std::runtime_error when python3 cannot run or the connection fails.
nlohmann::json python_request(std::uint16_t port, const std::string& method, const std::string& path,
                              const std::map<std::string, std::string>& headers = {}, const std::string& body = "");

}  // namespace engram::testing
