// The HTTPS side of Client against a tiny in-process TLS server (plain OpenSSL and POSIX sockets, a
// throw-away self-signed certificate made at run time).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "engram/http/client.h"

using namespace engram::http;
using namespace std::chrono_literals;

namespace {

class TlsServer {
public:
    TlsServer() {
        key_ = EVP_EC_gen("P-256");
        REQUIRE(key_);
        cert_ = X509_new();
        X509_set_version(cert_, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(cert_), 1);
        X509_gmtime_adj(X509_getm_notBefore(cert_), -60);
        X509_gmtime_adj(X509_getm_notAfter(cert_), 3600);
        X509_set_pubkey(cert_, key_);
        auto* name = X509_get_subject_name(cert_);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
        X509_set_issuer_name(cert_, name);
        X509V3_CTX v3;
        X509V3_set_ctx_nodb(&v3);
        X509V3_set_ctx(&v3, cert_, cert_, nullptr, nullptr, 0);
        auto* san = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
        REQUIRE(san);
        X509_add_ext(cert_, san, -1);
        X509_EXTENSION_free(san);
        REQUIRE(X509_sign(cert_, key_, EVP_sha256()) > 0);

        ctx_ = SSL_CTX_new(TLS_server_method());
        REQUIRE(SSL_CTX_use_certificate(ctx_, cert_) == 1);
        REQUIRE(SSL_CTX_use_PrivateKey(ctx_, key_) == 1);

        listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(listen_fd_, 8) == 0);
        socklen_t len = sizeof addr;
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~TlsServer() {
        stop_ = true;
        thread_.join();
        ::close(listen_fd_);
        SSL_CTX_free(ctx_);
        X509_free(cert_);
        EVP_PKEY_free(key_);
    }
    std::uint16_t port() const { return port_; }
    int handshakes() const { return handshakes_; }

private:
    void serve() {
        while (!stop_) {
            pollfd p{listen_fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            int fd = ::accept(listen_fd_, nullptr, nullptr);
            if (fd < 0) continue;
            timeval tv{2, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            SSL* ssl = SSL_new(ctx_);
            SSL_set_fd(ssl, fd);
            if (SSL_accept(ssl) == 1) {
                ++handshakes_;
                const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
                serve_connection(ssl, sni ? sni : "");
            }
            SSL_shutdown(ssl);
            SSL_free(ssl);
            ::close(fd);
        }
    }
    void serve_connection(SSL* ssl, const std::string& sni) {
        std::string in;
        int served = 0;
        for (;;) {
            auto end = in.find("\r\n\r\n");
            if (end == std::string::npos) {
                char buf[4096];
                int n = SSL_read(ssl, buf, sizeof buf);
                if (n <= 0) return;
                in.append(buf, static_cast<std::size_t>(n));
                continue;
            }
            std::string head = in.substr(0, end);
            in.erase(0, end + 4);
            ++served;
            std::string body = R"({"sni":")" + sni + R"(","served":)" + std::to_string(served) + R"(,"line":")" +
                               head.substr(0, head.find('\r')) + "\"}";
            std::string out =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                "\r\n\r\n" + body;
            if (SSL_write(ssl, out.data(), static_cast<int>(out.size())) <= 0) return;
        }
    }

    EVP_PKEY* key_ = nullptr;
    X509* cert_ = nullptr;
    SSL_CTX* ctx_ = nullptr;
    int listen_fd_ = -1;
    std::uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<int> handshakes_{0};
    std::thread thread_;
};

}  // namespace

TEST_CASE("https requests reuse one TLS connection and send SNI", "[unit][http]") {
    TlsServer server;
    ClientOptions opts;
    opts.verify_tls = false;  // self-signed
    opts.timeout = 3000ms;
    Client c("https://localhost:" + std::to_string(server.port()) + "/v1", opts);
    auto a = c.get("/models?x=1");
    REQUIRE(a.ok());
    CHECK(a->status == 200);
    CHECK(a->json()["sni"] == "localhost");
    CHECK(a->json()["line"] == "GET /v1/models?x=1 HTTP/1.1");
    auto b = c.post_json("/chat/completions", {{"model", "m"}});
    REQUIRE(b.ok());
    CHECK(b->json()["served"] == 2);
    CHECK(b->json()["line"] == "POST /v1/chat/completions HTTP/1.1");
    CHECK(c.connections_opened() == 1);
    CHECK(server.handshakes() == 1);
}

TEST_CASE("https refuses a certificate it cannot verify", "[unit][http]") {
    TlsServer server;
    ClientOptions opts;
    opts.timeout = 3000ms;
    Client c("https://127.0.0.1:" + std::to_string(server.port()), opts);
    auto r = c.get("/");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "connect");
    CHECK(r.error().detail.find("TLS handshake") != std::string::npos);
    CHECK(r.error().detail.find("certificate verify failed") != std::string::npos);
}
