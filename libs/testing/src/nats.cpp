#include "engram/testing/nats.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

#include "engram/core/uuid.h"
#include "engram/testing/process.h"
#include "engram/testing/util.h"
#include "internal.h"

namespace fs = std::filesystem;

namespace engram::testing {

namespace {

std::string find_nats_server() {
    if (const char* env = std::getenv("ENGRAM_NATS_SERVER"); env && *env) {
        if (access(env, X_OK) != 0) throw std::runtime_error(std::string("ENGRAM_NATS_SERVER=") + env + " is not executable");
        return env;
    }
    std::string found = which("nats-server", {"/usr/sbin", "/usr/local/bin"});
    if (found.empty()) throw std::runtime_error("nats-server not found in PATH: install nats-server or set ENGRAM_NATS_SERVER");
    return found;
}

// True once the server greets a client with an INFO line that announces JetStream.
bool nats_ready(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bool ok = false;
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
        std::string got;
        char buf[1024];
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        while (got.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
            pollfd p{fd, POLLIN, 0};
            if (poll(&p, 1, 200) <= 0) continue;
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0) break;
            got.append(buf, static_cast<std::size_t>(n));
        }
        ok = got.rfind("INFO ", 0) == 0 && got.find("\"jetstream\":true") != std::string::npos;
    }
    close(fd);
    return ok;
}

}  // namespace

Nats::Nats() : Nats(NatsOptions{}) {}

Nats::Nats(NatsOptions options) : options_(std::move(options)) {
    bin_ = find_nats_server();
    dir_ = make_temp_dir("engram-nats");
    if (options_.auth) {
        token_ = Uuid::v4().str();
        token_.erase(std::remove(token_.begin(), token_.end(), '-'), token_.end());
    }
    {
        std::ofstream conf(dir_ + "/nats.conf");
        if (options_.max_payload > 0) conf << "max_payload: " << options_.max_payload << "\n";
        if (!token_.empty()) conf << "authorization { token: \"" << token_ << "\" }\n";
    }
    try {
        watchdog_ = std::make_unique<Watchdog>("kill -9 $(cat " + shell_quote(dir_ + "/pid") +
                                               " 2>/dev/null) 2>/dev/null; sleep 0.2; rm -rf " + shell_quote(dir_));
        for (int attempt = 0;; ++attempt) {
            port_ = free_port();
            if (try_start()) break;
            if (attempt >= 4)
                throw std::runtime_error("nats-server did not start on port " + std::to_string(port_) + ": " + log());
        }
    } catch (...) {
        proc_.reset();
        std::error_code ec;
        fs::remove_all(dir_, ec);
        if (watchdog_) watchdog_->disarm();
        throw;
    }
}

Nats::~Nats() {
    proc_.reset();  // SIGTERM, SIGKILL after the grace period
    std::error_code ec;
    fs::remove_all(dir_, ec);
    if (watchdog_) watchdog_->disarm();
}

Nats& Nats::shared() {
    static Nats instance;
    return instance;
}

std::string Nats::url() const {
    return token_.empty() ? url_without_token() : "nats://" + token_ + "@127.0.0.1:" + std::to_string(port_);
}
std::string Nats::url_without_token() const { return "nats://127.0.0.1:" + std::to_string(port_); }

bool Nats::running() const { return proc_ && proc_->alive(); }

std::string Nats::log() const { return tail_file(dir_ + "/nats.log", 16000); }

bool Nats::try_start() {
    std::vector<std::string> argv{bin_,        "-c", dir_ + "/nats.conf",   "-js", "-a",
                                  "127.0.0.1", "-p", std::to_string(port_), "-sd", dir_ + "/js"};
    argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
    proc_ = std::make_unique<Process>(argv, std::map<std::string, std::string>{}, dir_ + "/nats.log");
    { std::ofstream(dir_ + "/pid") << proc_->pid() << "\n"; }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
        if (!proc_->alive()) {
            proc_.reset();
            return false;  // e.g. the port was taken meanwhile
        }
        if (nats_ready(port_)) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    proc_.reset();
    return false;
}

void Nats::start() {
    if (running()) return;
    if (!try_start()) throw std::runtime_error("nats-server did not restart on port " + std::to_string(port_) + ": " + log());
}

void Nats::stop(bool hard) {
    if (!proc_) return;
    if (hard)
        proc_->kill9();
    else
        proc_->terminate_and_wait(std::chrono::seconds(10));
    proc_.reset();
}

}  // namespace engram::testing

namespace engram::testing {

NatsCluster::NatsCluster() {
    std::string bin = find_nats_server();
    dir_ = make_temp_dir("engram-nats-cluster");
    watchdog_ = std::make_unique<Watchdog>("for p in $(cat " + shell_quote(dir_) +
                                           "/*.pid 2>/dev/null); do kill -9 $p; done 2>/dev/null; "
                                           "sleep 0.2; rm -rf " +
                                           shell_quote(dir_));
    for (int i = 0; i < 3; ++i) {
        client_.push_back(free_port());
        route_.push_back(free_port());
    }
    std::string routes;
    for (int i = 0; i < 3; ++i) routes += (i ? ", " : "") + std::string("nats-route://127.0.0.1:") + std::to_string(route_[i]);
    for (int i = 0; i < 3; ++i) {
        std::string n = "n" + std::to_string(i);
        std::ofstream(dir_ + "/" + n + ".conf")
            << "server_name: " << n << "\nlisten: 127.0.0.1:" << client_[i] << "\nmax_payload: 8388608\njetstream { store_dir: \""
            << dir_ << "/js" << i << "\" }\ncluster { name: engram-test, listen: 127.0.0.1:" << route_[i] << ", routes: ["
            << routes << "] }\n";
        servers_.push_back(nullptr);
        start(n);
    }
}

NatsCluster::~NatsCluster() {
    servers_.clear();
    std::error_code ec;
    fs::remove_all(dir_, ec);
    if (watchdog_) watchdog_->disarm();
}

std::string NatsCluster::url() const {
    std::string url;
    for (int p : client_) url += (url.empty() ? "" : ",") + std::string("nats://127.0.0.1:") + std::to_string(p);
    return url;
}

std::string NatsCluster::logs() const {
    std::string out;
    for (int i = 0; i < 3; ++i)
        out += "--- n" + std::to_string(i) + "\n" + tail_file(dir_ + "/n" + std::to_string(i) + ".log", 3000);
    return out;
}

static std::size_t server_index(const std::string& name) {
    if (name.size() != 2 || name[0] != 'n' || name[1] < '0' || name[1] > '2')
        throw std::invalid_argument("no server named '" + name + "' in the cluster (n0, n1, n2)");
    return static_cast<std::size_t>(name[1] - '0');
}

void NatsCluster::kill(const std::string& server_name) {
    auto i = server_index(server_name);
    if (servers_[i]) servers_[i]->kill9();
    servers_[i].reset();
}

void NatsCluster::start(const std::string& server_name) {
    auto i = server_index(server_name);
    if (servers_[i] && servers_[i]->alive()) return;
    servers_[i] =
        std::make_unique<Process>(std::vector<std::string>{find_nats_server(), "-c", dir_ + "/" + server_name + ".conf"},
                                  std::map<std::string, std::string>{}, dir_ + "/" + server_name + ".log");
    { std::ofstream(dir_ + "/" + server_name + ".pid") << servers_[i]->pid() << "\n"; }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!nats_ready(client_[i])) {
        if (!servers_[i]->alive() || std::chrono::steady_clock::now() > deadline)
            throw std::runtime_error("nats-server " + server_name +
                                     " did not start: " + tail_file(dir_ + "/" + server_name + ".log"));
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

}  // namespace engram::testing
