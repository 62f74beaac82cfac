#pragma once
// A plain blocking socket for the HTTP tests, for what the Client deliberately cannot do (malformed
// requests, pipelining, never reading, vanishing, holding a connection open without a request).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <thread>

namespace engram::http::test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Polls `pred` every few milliseconds until it holds or `limit` passes.
template <class P>
bool eventually(P pred, std::chrono::milliseconds limit = 5000ms) {
    auto end = Clock::now() + limit;
    while (Clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(5ms);
    }
    return pred();
}

class RawConn {
public:
    explicit RawConn(std::uint16_t port, int rcvbuf = 0) {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd_ >= 0);
        if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    }
    ~RawConn() { close(); }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    void send(std::string_view s) {
        while (!s.empty()) {
            auto n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
            REQUIRE(n > 0);
            s.remove_prefix(static_cast<std::size_t>(n));
        }
    }
    // Reads until `needle` has been seen `count` times, the peer closes, or `limit` passes.
    std::string read_until(std::string_view needle, int count = 1, std::chrono::milliseconds limit = 5000ms) {
        auto end = Clock::now() + limit;
        while (occurrences(needle) < count) {
            if (!read_some(end)) break;
        }
        return data_;
    }
    // Reads until the peer closes (true) or `limit` passes (false).
    bool read_to_eof(std::chrono::milliseconds limit = 5000ms) {
        auto end = Clock::now() + limit;
        for (;;) {
            if (eof_) return true;
            if (!read_some(end)) return eof_;
        }
    }
    const std::string& data() const { return data_; }

private:
    int occurrences(std::string_view needle) const {
        int n = 0;
        for (auto pos = data_.find(needle); pos != std::string::npos; pos = data_.find(needle, pos + needle.size())) ++n;
        return n;
    }
    bool read_some(Clock::time_point end) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
        if (left <= 0 || eof_) return false;
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
        char buf[8192];
        auto n = ::recv(fd_, buf, sizeof buf, 0);
        if (n <= 0) {
            eof_ = true;
            return false;
        }
        data_.append(buf, static_cast<std::size_t>(n));
        return true;
    }

    int fd_ = -1;
    bool eof_ = false;
    std::string data_;
};

}  // namespace engram::http::test
