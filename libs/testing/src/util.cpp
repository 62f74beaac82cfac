#include "engram/testing/util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/magic.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace engram::testing {

int free_port() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        int e = errno;
        close(fd);
        throw std::runtime_error(std::string("bind 127.0.0.1:0: ") + std::strerror(e));
    }
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    return ntohs(addr.sin_port);
}

bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(2);
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(pause);
        if (pause < std::chrono::milliseconds(50)) pause *= 2;
    }
    return pred();
}

bool wait_for_port(int port, std::chrono::milliseconds timeout) {
    return eventually(
        [port] {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) return false;
            sockaddr_in addr{};
            addr.sin_family = AF_INET;
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            addr.sin_port = htons(static_cast<uint16_t>(port));
            bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
            close(fd);
            return ok;
        },
        timeout);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return "";
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string tail_file(const std::string& path, std::size_t max_bytes) {
    std::string all = read_file(path);
    if (all.size() <= max_bytes) return all;
    return "..." + all.substr(all.size() - max_bytes);
}

std::string temp_base() {
    static const std::string base = [] {
        if (const char* env = std::getenv("ENGRAM_TEST_TMPDIR"); env && *env) return std::string(env);
        struct statfs fs {};
        struct statvfs vfs {};
        if (statfs("/dev/shm", &fs) == 0 && fs.f_type == TMPFS_MAGIC && statvfs("/dev/shm", &vfs) == 0 &&
            static_cast<unsigned long long>(vfs.f_bavail) * vfs.f_frsize >= (2ULL << 30) && access("/dev/shm", W_OK | X_OK) == 0)
            return std::string("/dev/shm");
        return std::string("/tmp");
    }();
    return base;
}

std::string make_temp_dir(const std::string& prefix, const std::string& base) {
    std::string tmpl = (base.empty() ? temp_base() : base) + "/" + prefix + "-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
    return tmpl;
}

std::vector<int> child_pids(int pid) {
    std::vector<int> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
        std::string name = e.path().filename().string();
        if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
        std::ifstream st(e.path() / "stat");
        std::string line;
        std::getline(st, line);
        auto close = line.rfind(')');  // the command name may hold spaces and parentheses
        if (close == std::string::npos || close + 2 > line.size()) continue;
        std::istringstream rest(line.substr(close + 2));
        char state = 0;
        int ppid = 0;
        rest >> state >> ppid;
        if (ppid == pid) out.push_back(std::stoi(name));
    }
    return out;
}

}  // namespace engram::testing
