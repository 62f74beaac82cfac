// The request guard alone (the services' own tests drive it through real requests).
#include <catch2/catch.hpp>

#include "engram/config/config.h"
#include "engram/http/guard.h"

using namespace engram;
using namespace engram::http;

namespace {

Request with(std::map<std::string, std::string> headers, std::string method = "GET") {
    Request r;
    r.method = std::move(method);
    r.headers = std::move(headers);
    return r;
}

}  // namespace

TEST_CASE("guard: without a token only loopback names and allowed hosts are served", "[unit][http][guard]") {
    Guard g(GuardOptions{"", {"engram.lan", "*.example.com"}});
    for (const char* ok : {"localhost", "localhost:8080", "LOCALHOST:1", "chat.localhost:8081", "localhost.", "127.0.0.1",
                           "127.0.0.1:8080", "127.1.2.3:9", "[::1]", "[::1]:8081", "[::ffff:127.0.0.1]:80", "engram.lan",
                           "Engram.LAN:443", "a.example.com", "a.b.example.com:8080", ""}) {
        INFO(ok);
        CHECK(g.host_allowed(ok));
        CHECK_FALSE(g.check_host(with({{"host", ok}})));
    }
    for (const char* bad :
         {"evil.example", "example.com", "localhost.evil.com", "127.0.0.1.nip.io", "evil.com:8080", "xn--localhost",
          "engram.lan.evil", "128.0.0.1", "[::2]", "[::1", "localhost:80x", "10.0.0.1", "attacker.localhost.com"}) {
        INFO(bad);
        CHECK_FALSE(g.host_allowed(bad));
        auto r = g.check_host(with({{"host", bad}}));
        REQUIRE(r);
        CHECK(r->status == 421);
        auto j = nlohmann::json::parse(r->body);
        CHECK(j["error"] == "host_not_allowed");
        CHECK(j["detail"].get<std::string>().find("ENGRAM_ALLOWED_HOSTS") != std::string::npos);
    }
    // A token protects the service instead: any Host is served (and the token checked).
    Guard t(GuardOptions{"s3cret", {}});
    CHECK_FALSE(t.check_host(with({{"host", "evil.example"}})));
}

TEST_CASE("guard: the bearer token, compared whole", "[unit][http][guard]") {
    Guard none;
    CHECK_FALSE(none.check_token(with({})));
    Guard g(GuardOptions{"s3cret", {}});
    CHECK_FALSE(g.check_token(with({{"authorization", "Bearer s3cret"}})));
    for (const char* bad : {"", "Bearer", "Bearer ", "Bearer s3cre", "Bearer s3cret2", "bearer s3cret", "Basic s3cret"}) {
        INFO(bad);
        auto r = g.check_token(with({{"authorization", bad}}));
        REQUIRE(r);
        CHECK(r->status == 401);
        CHECK(nlohmann::json::parse(r->body)["error"] == "unauthorized");
    }
    auto q = with({});
    q.query["access_token"] = "s3cret";
    CHECK(g.check_token(q));              // not unless asked
    CHECK_FALSE(g.check_token(q, true));  // EventSource
    q.method = "POST";
    CHECK(g.check_token(q, true));  // never for a write
}

TEST_CASE("guard: a body must be declared JSON", "[unit][http][guard]") {
    for (const char* ok :
         {"application/json", "Application/JSON", "application/json; charset=utf-8", "application/json;charset=UTF-8",
          "application/json; charset=\"utf-8\"", " application/json ", "application/json; foo=bar"})
        CHECK(is_json_content_type(ok));
    for (const char* bad : {"", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                            "multipart/form-data; boundary=x", "application/jsonp", "application/json-seq",
                            "application/json; charset=latin1", "application/json; garbage", "text/json"}) {
        INFO(bad);
        CHECK_FALSE(is_json_content_type(bad));
        auto r = require_json(with({{"content-type", bad}}, "POST"));
        REQUIRE(r);
        CHECK(r->status == 415);
        CHECK(nlohmann::json::parse(r->body)["error"] == "unsupported_media_type");
    }
}

TEST_CASE("guard: ENGRAM_ALLOWED_HOSTS is checked at start", "[unit][http][guard]") {
    CHECK(parse_host_list("")->empty());
    CHECK(*parse_host_list(" Engram.lan , *.example.com,") == std::vector<std::string>{"engram.lan", "*.example.com"});
    for (const char* bad : {"http://engram.lan", "engram.lan:8080", "a b", "*", "*.", "-x.com", "a/b"}) {
        INFO(bad);
        CHECK_FALSE(parse_host_list(bad));
    }
    config::Spec spec;
    add_guard_settings(spec);
    auto v = spec.load([](const std::string& k) -> std::optional<std::string> {
        if (k == "ENGRAM_ALLOWED_HOSTS") return "engram.lan:80";
        return std::nullopt;
    });
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().detail.find("ENGRAM_ALLOWED_HOSTS") != std::string::npos);
    auto good = spec.load([](const std::string& k) -> std::optional<std::string> {
        if (k == "ENGRAM_ALLOWED_HOSTS") return "engram.lan";
        if (k == "ENGRAM_API_TOKEN") return "t";
        return std::nullopt;
    });
    REQUIRE(good.ok());
    good->set("ENGRAM_API_TOKEN", "t");
    auto o = guard_options(*good);
    CHECK(o.token == "t");
    CHECK(o.allowed_hosts == std::vector<std::string>{"engram.lan"});
}
