#include "engram/testing/py_http_fake.h"

#include "engram/http/client.h"
#include "engram/testing/process.h"
#include "engram/testing/util.h"
#include "internal.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace engram::testing {

PyHttpFake::PyHttpFake(const nlohmann::json& routes) : dir_(make_temp_dir("engram-pyfake")) {
    std::string python = which("python3");
    if (python.empty()) throw std::runtime_error("python3 not found in PATH (Debian package python3)");
    watchdog_ = std::make_unique<Watchdog>("sleep 0.2; rm -rf " + shell_quote(dir_));
    { std::ofstream(dir_ + "/routes.json") << routes.dump(); }
    const std::string port_file = dir_ + "/port";
    proc_ = std::make_unique<Process>(std::vector<std::string>{python, "-u", source_dir() + "/tests/fakes/py_http_fake.py",
                                                               "--port-file", port_file, "--routes", dir_ + "/routes.json"},
                                      std::map<std::string, std::string>{}, dir_ + "/fake.log");
    // The script binds port 0 and writes the port it got, so no other process can take it meanwhile.
    bool up = eventually(
        [&] {
            if (!proc_->alive()) return true;
            auto text = read_file(port_file);
            if (text.empty()) return false;
            port_ = std::stoi(text);
            return true;
        },
        std::chrono::seconds(30));
    if (!up || !proc_->alive() || port_ == 0 || !wait_for_port(port_)) {
        auto why = log();
        proc_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        watchdog_.reset();
        throw std::runtime_error("py_http_fake.py did not start: " + why);
    }
}

PyHttpFake::~PyHttpFake() {
    proc_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    watchdog_.reset();
}

std::string PyHttpFake::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::string PyHttpFake::log() const { return tail_file(dir_ + "/fake.log", 8000); }

nlohmann::json PyHttpFake::control(const std::string& method, const std::string& path, const std::string& body) const {
    http::Client c(url());
    auto r = c.request(method, path, body, {{"Content-Type", "application/json"}});
    if (!r || r->status != 200)
        throw std::runtime_error("py_http_fake.py control " + method + " " + path +
                                 " failed: " + (r ? std::to_string(r->status) + " " + r->body : r.error().detail));
    return r->json();
}

void PyHttpFake::set_routes(const nlohmann::json& routes) { control("PUT", "/_fake/routes", routes.dump()); }

void PyHttpFake::push(const nlohmann::json& route) { control("POST", "/_fake/queue", route.dump()); }

std::vector<nlohmann::json> PyHttpFake::requests() const {
    auto all = control("GET", "/_fake/requests");
    return std::vector<nlohmann::json>(all.begin(), all.end());
}

std::size_t PyHttpFake::connections() const { return control("GET", "/_fake/stats")["connections"].get<std::size_t>(); }

void PyHttpFake::reset() { control("POST", "/_fake/reset"); }

}  // namespace engram::testing
