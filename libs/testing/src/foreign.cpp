#include "engram/testing/foreign.h"

#include "engram/testing/process.h"

#include <stdexcept>

namespace engram::testing {

nlohmann::json python_request(std::uint16_t port, const std::string& method, const std::string& path,
                              const std::map<std::string, std::string>& headers, const std::string& body) {
    static const char* script = R"(import http.client, json, sys
port, method, path, headers, body = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
c.request(method, path, body=body.encode() if body or method == "POST" else None, headers=headers)
r = c.getresponse()
out = {"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
       "set_cookie": r.msg.get_all("Set-Cookie") or [], "body": r.read().decode("utf-8", "replace")}
print("RESULT " + json.dumps(out)))";
    auto ran = run({"python3", "-c", script, std::to_string(port), method, path, nlohmann::json(headers).dump(), body});
    auto at = ran.output.rfind("RESULT ");
    if (ran.exit_code != 0 || at == std::string::npos)
        throw std::runtime_error("python3 http.client failed (exit " + std::to_string(ran.exit_code) + "): " + ran.output);
    return nlohmann::json::parse(ran.output.substr(at + 7));
}

}  // namespace engram::testing
