#include "engram/testing/nginx.h"

#include "engram/testing/process.h"
#include "engram/testing/util.h"
#include "internal.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace engram::testing {

namespace {

std::string find_nginx() {
    if (const char* env = std::getenv("ENGRAM_NGINX"); env && *env) return env;
    std::string found = which("nginx", {"/usr/sbin", "/sbin", "/usr/local/sbin"});
    if (found.empty()) throw std::runtime_error("nginx not found (Debian package nginx, or set ENGRAM_NGINX)");
    return found;
}

std::string config(const std::string& dir, int port, const std::string& upstream_hostport) {
    std::string c;
    // One process (no master/worker split), so the harness's SIGTERM/SIGKILL reaches all of nginx.
    c += "daemon off;\nmaster_process off;\nworker_processes 1;\n";
    if (is_root()) c += "user root;\n";  // as root nginx would switch to nobody, who cannot write here
    c += "pid " + dir + "/nginx.pid;\nerror_log " + dir + "/error.log info;\n";
    c += "events { worker_connections 1024; }\n";
    c += "http {\n";
    c += "  log_format engram '$status \"$request\" upstream=$upstream_status';\n";
    c += "  access_log " + dir + "/access.log engram;\n";
    for (const char* t : {"client_body", "proxy", "fastcgi", "uwsgi", "scgi"})
        c += std::string("  ") + t + "_temp_path " + dir + "/" + t + ";\n";
    c += "  upstream engram_upstream { server " + upstream_hostport + "; keepalive 16; }\n";
    c += "  server {\n";
    c += "    listen 127.0.0.1:" + std::to_string(port) + ";\n";
    c += "    client_max_body_size 4m;\n";
    c += "    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n    proxy_set_header Host $host;\n";
    c += "    proxy_read_timeout 300s;\n";  // long polls and quiet event streams
    c += "    location / { proxy_pass http://engram_upstream; }\n";
    c += "    location /events/stream { proxy_pass http://engram_upstream; proxy_buffering off; proxy_cache off; }\n";
    c += "  }\n}\n";
    return c;
}

}  // namespace

Nginx::Nginx(const std::string& upstream) : dir_(make_temp_dir("engram-nginx")) {
    const std::string prefix = "http://";
    if (upstream.rfind(prefix, 0) != 0) throw std::runtime_error("Nginx: upstream must be http://host:port, got " + upstream);
    auto hostport = upstream.substr(prefix.size());
    if (auto slash = hostport.find('/'); slash != std::string::npos) hostport.resize(slash);
    std::string bin = find_nginx();
    watchdog_ = std::make_unique<Watchdog>("sleep 0.2; rm -rf " + shell_quote(dir_));
    std::string why;
    for (int attempt = 0; attempt < 5 && !proc_; ++attempt) {
        port_ = free_port();
        { std::ofstream(dir_ + "/nginx.conf") << config(dir_, port_, hostport); }
        // -e: the error log before the config is read (else nginx first opens /var/log/nginx/error.log).
        auto p = std::make_unique<Process>(
            std::vector<std::string>{bin, "-p", dir_ + "/", "-c", dir_ + "/nginx.conf", "-e", dir_ + "/error.log"},
            std::map<std::string, std::string>{}, dir_ + "/stdout.log");
        bool up = eventually([&] { return !p->alive() || wait_for_port(port_, std::chrono::milliseconds(50)); },
                             std::chrono::seconds(20));
        if (up && p->alive()) {
            proc_ = std::move(p);
            break;
        }
        why = error_log() + read_file(dir_ + "/stdout.log");  // e.g. the port was taken meanwhile
    }
    if (!proc_) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        watchdog_.reset();
        throw std::runtime_error("nginx did not start: " + why);
    }
}

Nginx::~Nginx() {
    proc_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    watchdog_.reset();
}

std::string Nginx::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::string Nginx::error_log() const { return tail_file(dir_ + "/error.log", 8000); }

std::string Nginx::access_log() const { return read_file(dir_ + "/access.log"); }

std::size_t Nginx::count(const std::string& needle) const {
    std::size_t n = 0;
    std::istringstream in(access_log());
    for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
    return n;
}

}  // namespace engram::testing
