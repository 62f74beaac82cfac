// The web chat's caps and cookie lifetime, driven with raw HTTP from Python and curl: the cookie's
// attributes, an expired or tampered cookie refused (and a fresh session for the page), rotation
// keeping the session, messages rate-limited per session and per address (429 + Retry-After), and
// open streams capped per session and per address.
#include "signature.h"
#include "support.h"
#include "webchat_cookie.h"

#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

using namespace engram;
using gateway::test::python_request;
using gateway::test::require_error;
using nlohmann::json;

namespace {

constexpr const char* kSecret = "a-test-secret-of-enough-length";

struct Fixture {
    testing::Stack stack{"webchat-caps"};
    std::int64_t now = 1'800'000'000;
    gateway::test::InProcess gw;
    gateway::CookieSigner signer{kSecret};

    explicit Fixture(std::map<std::string, std::string> env = {})
        : gw(stack, with_secret(std::move(env)), [this] { return now; }) {}
    static std::map<std::string, std::string> with_secret(std::map<std::string, std::string> env) {
        env.emplace("WEBCHAT_SECRET", kSecret);
        return env;
    }
    std::uint16_t port() const { return gw.app->port(); }

    // The cookie value of a Set-Cookie header.
    static std::string value_of(const std::string& set_cookie) {
        auto eq = set_cookie.find('='), semi = set_cookie.find(';');
        return set_cookie.substr(eq + 1, semi - eq - 1);
    }
    std::string new_session() {
        auto r = python_request(port(), "GET", "/");
        REQUIRE(r["status"] == 200);
        REQUIRE(r["set_cookie"].size() == 1);
        return value_of(r["set_cookie"][0]);
    }
    json say(const std::string& cookie, const std::string& id, const std::string& text = "hello") {
        return python_request(port(), "POST", "/chat/messages",
                              {{"Content-Type", "application/json"}, {"Cookie", "engram_chat=" + cookie}},
                              json{{"id", id}, {"text", text}}.dump());
    }
};

std::string uuid_of(const std::string& cookie) { return cookie.substr(0, cookie.find('.')); }

// An event stream held open on a raw socket until close(): a browser tab.
class Tab {
public:
    Tab(std::uint16_t port, const std::string& cookie) {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        std::string req =
            "GET /chat/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCookie: engram_chat=" + cookie +
            "\r\n\r\n";
        REQUIRE(::send(fd_, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
        timeval tv{10, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[4096];
        while (head_.find("\r\n\r\n") == std::string::npos) {
            auto n = ::recv(fd_, buf, sizeof buf, 0);
            if (n <= 0) break;
            head_.append(buf, static_cast<std::size_t>(n));
        }
    }
    ~Tab() { close(); }
    int status() const { return head_.size() > 12 ? std::stoi(head_.substr(9, 3)) : 0; }
    const std::string& head() const { return head_; }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
    std::string head_;
};

}  // namespace

TEST_CASE("web chat cookie: HttpOnly, SameSite=Lax, 30 days, Secure behind https (curl)", "[integration][gateway][webchat]") {
    Fixture f;
    auto curl = [&](std::vector<std::string> extra) {
        std::vector<std::string> argv = {"curl", "-s", "-o", "/dev/null", "-D", "-"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        argv.push_back(f.gw.app->url() + "/");
        auto r = testing::run(argv);
        REQUIRE(r.exit_code == 0);
        auto at = r.output.find("engram_chat=");
        REQUIRE(at != std::string::npos);
        return r.output.substr(at, r.output.find("\r\n", at) - at);
    };
    auto plain = curl({});
    INFO(plain);
    CHECK(plain.find("; Path=/") != std::string::npos);
    CHECK(plain.find("; HttpOnly") != std::string::npos);
    CHECK(plain.find("; SameSite=Lax") != std::string::npos);
    CHECK(plain.find("; Max-Age=2592000") != std::string::npos);
    CHECK(plain.find("Secure") == std::string::npos);
    // The issue time is inside the signed value.
    auto value = plain.substr(12, plain.find(';') - 12);
    auto verified = f.signer.verify(value, f.now);
    REQUIRE(verified);
    CHECK(verified->issued == f.now);
    CHECK(curl({"-H", "X-Forwarded-Proto: https"}).find("; Secure") != std::string::npos);
    CHECK(curl({"-H", "Forwarded: for=1.2.3.4;proto=https"}).find("; Secure") != std::string::npos);

    Fixture always(std::map<std::string, std::string>{{"WEBCHAT_COOKIE_SECURE", "always"}});
    auto r = python_request(always.port(), "GET", "/");
    REQUIRE(r["set_cookie"].size() == 1);
    CHECK(r["set_cookie"][0].get<std::string>().find("; Secure") != std::string::npos);
}

TEST_CASE("web chat cookie: an expired or tampered cookie is refused with nothing stored, the page starts afresh",
          "[integration][gateway][webchat]") {
    Fixture f;
    const std::string uuid = Uuid::v4().str();
    auto expired = f.signer.sign(uuid, f.now - gateway::CookieSigner::kMaxAge - 1);
    auto future = f.signer.sign(uuid, f.now + 3600);
    auto valid_old = f.signer.sign(uuid, f.now - 3600);
    // A younger issue time under the old signature.
    auto younger = uuid + "." + std::to_string(f.now) + valid_old.substr(valid_old.rfind('.'));
    // The v1 form (no issue time), with a v1 signature.
    auto v1 = uuid + "." + gateway::hmac_sha256_hex(kSecret, "engram-webchat-session-v1:" + uuid);
    for (const std::string& bad : std::vector<std::string>{expired, future, younger, v1}) {
        INFO(bad);
        require_error(f.say(bad, "m-1"), 401, "unauthorized", "expired");
        require_error(python_request(f.port(), "GET", "/chat/session", {{"Cookie", "engram_chat=" + bad}}), 401, "unauthorized");
        Tab tab(f.port(), bad);
        CHECK(tab.status() == 401);
        // The page hands out a new session, not the old one.
        auto page = python_request(f.port(), "GET", "/", {{"Cookie", "engram_chat=" + bad}});
        REQUIRE(page["set_cookie"].size() == 1);
        CHECK(uuid_of(Fixture::value_of(page["set_cookie"][0])) != uuid);
    }
    CHECK(f.stack.count_all() == 0);
    // The chat still serves a valid cookie.
    auto ok = f.say(valid_old, "m-1");
    INFO(ok.dump());
    CHECK(ok["status"] == 201);
    CHECK(f.stack.count("MessageReceived", "session:web:" + uuid) == 1);
}

TEST_CASE("web chat cookie: one older than a week is re-issued for the same session", "[integration][gateway][webchat]") {
    Fixture f;
    const std::string uuid = Uuid::v4().str();
    auto week_old = f.signer.sign(uuid, f.now - gateway::CookieSigner::kRotateAfter + 60);
    auto eight_days = f.signer.sign(uuid, f.now - 8 * 24 * 3600);
    // Younger than a week: kept as it is.
    auto fresh = python_request(f.port(), "GET", "/chat/session", {{"Cookie", "engram_chat=" + week_old}});
    REQUIRE(fresh["status"] == 200);
    CHECK(fresh["set_cookie"].empty());
    CHECK(python_request(f.port(), "GET", "/", {{"Cookie", "engram_chat=" + week_old}})["set_cookie"].empty());

    // Older: the answer carries a new cookie for the same session, issued now.
    for (const char* path : {"/", "/chat/session"}) {
        INFO(path);
        auto r = python_request(f.port(), "GET", path, {{"Cookie", "engram_chat=" + eight_days}});
        REQUIRE(r["status"] == 200);
        REQUIRE(r["set_cookie"].size() == 1);
        auto rotated = f.signer.verify(Fixture::value_of(r["set_cookie"][0]), f.now);
        REQUIRE(rotated);
        CHECK(rotated->uuid == uuid);
        CHECK(rotated->issued == f.now);
        CHECK(r["set_cookie"][0].get<std::string>().find("SameSite=Lax") != std::string::npos);
    }
    auto posted = f.say(eight_days, "m-1", "before the rotation");
    REQUIRE(posted["status"] == 201);
    REQUIRE(posted["set_cookie"].size() == 1);
    auto next = Fixture::value_of(posted["set_cookie"][0]);
    {
        Tab tab(f.port(), eight_days);
        CHECK(tab.status() == 200);
        CHECK(tab.head().find("Set-Cookie: engram_chat=" + uuid + ".") != std::string::npos);
    }
    // Three weeks later the old cookie is gone, the rotated one still holds the conversation.
    f.now += 23 * 24 * 3600;
    require_error(f.say(eight_days, "m-2"), 401, "unauthorized");
    auto after = f.say(next, "m-2", "after the rotation");
    INFO(after.dump());
    REQUIRE(after["status"] == 201);
    CHECK(json::parse(after["body"].get<std::string>())["session_id"] == "session:web:" + uuid);
    CHECK(f.stack.count("MessageReceived", "session:web:" + uuid) == 2);
}

TEST_CASE("web chat: messages are rate-limited per session and per address with 429 and Retry-After",
          "[integration][gateway][webchat]") {
    SECTION("per session") {
        Fixture f(std::map<std::string, std::string>{{"WEBCHAT_SESSION_MESSAGES_PER_MINUTE", "1"}});
        auto a = f.new_session();
        auto b = f.new_session();
        REQUIRE(f.say(a, "a-1")["status"] == 201);
        auto limited = f.say(a, "a-2");
        require_error(limited, 429, "rate_limited", "session");
        auto retry = std::stoi(limited["headers"]["retry-after"].get<std::string>());
        CHECK(retry >= 1);
        CHECK(retry <= 60);
        // Invalid input does not spend the budget, and is still answered as invalid.
        require_error(f.say(a, "a 3"), 400, "invalid_request");
        CHECK(f.stack.count("MessageReceived") == 1);
        // Another session of the same address is not held back.
        CHECK(f.say(b, "b-1")["status"] == 201);
        // Nor are the page and the stream of the limited one.
        CHECK(python_request(f.port(), "GET", "/chat/session", {{"Cookie", "engram_chat=" + a}})["status"] == 200);
        auto metrics = f.gw.client->get("/metrics");
        CHECK(metrics->body.find("engram_gateway_webchat_rate_limited_total 1") != std::string::npos);
    }
    SECTION("per address: new cookies do not buy new budget") {
        Fixture f(std::map<std::string, std::string>{{"WEBCHAT_ADDRESS_MESSAGES_PER_MINUTE", "2"}});
        REQUIRE(f.say(f.new_session(), "m-1")["status"] == 201);
        auto limited = f.say(f.new_session(), "m-1");
        require_error(limited, 429, "rate_limited", "address");
        CHECK(limited["headers"].contains("retry-after"));
        CHECK(f.stack.count("MessageReceived") == 1);
    }
}

TEST_CASE("web chat: open streams are capped per session and per address", "[integration][gateway][webchat]") {
    Fixture f(std::map<std::string, std::string>{{"WEBCHAT_SESSION_STREAMS", "2"}, {"WEBCHAT_ADDRESS_STREAMS", "3"}});
    auto a = f.new_session();
    auto b = f.new_session();
    auto c = f.new_session();
    auto streams = [&] {
        auto r = f.gw.client->get("/metrics");
        auto at = r->body.find("\nengram_gateway_webchat_streams ");
        return at == std::string::npos ? std::string() : r->body.substr(at + 32, r->body.find('\n', at + 1) - at - 32);
    };
    {
        Tab a1(f.port(), a), a2(f.port(), a);
        REQUIRE(a1.status() == 200);
        REQUIRE(a2.status() == 200);
        Tab a3(f.port(), a);
        CHECK(a3.status() == 429);
        CHECK(a3.head().find("Retry-After: 5") != std::string::npos);
        auto third = python_request(f.port(), "GET", "/chat/events", {{"Cookie", "engram_chat=" + a}});
        require_error(third, 429, "too_many_streams", "session");
        // Another session from the same address takes the address's last slot, and no more.
        Tab b1(f.port(), b);
        CHECK(b1.status() == 200);
        Tab c1(f.port(), c);
        CHECK(c1.status() == 429);
        require_error(python_request(f.port(), "GET", "/chat/events", {{"Cookie", "engram_chat=" + c}}), 429, "too_many_streams",
                      "address");
        CHECK(streams() == "3");
        // A tab closed frees its slot.
        a1.close();
        REQUIRE(testing::eventually([&] { return streams() == "2"; }));
        Tab a4(f.port(), a);
        CHECK(a4.status() == 200);
    }
    REQUIRE(testing::eventually([&] { return streams() == "0"; }));
    Tab c2(f.port(), c);
    CHECK(c2.status() == 200);
}
