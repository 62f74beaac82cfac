// The store's request guard, driven from Python's http.client and curl: a web page cannot append
// (only application/json bodies are taken) and, without a token, cannot read the log through a
// rebound name (only loopback or allowed Host names are served). Every refusal writes nothing.
#include "fixture.h"

#include <catch2/catch.hpp>

using namespace engram;
using nlohmann::json;

namespace {

const std::string kEvent = R"({"type":"NoteTaken","aggregate_id":"user:42","data":{"text":"hi"}})";

void require_refused(const json& r, int status, const std::string& code, const std::string& part = "") {
    INFO(r.dump());
    REQUIRE(r["status"] == status);
    auto body = json::parse(r["body"].get<std::string>(), nullptr, false);
    CHECK(body["error"] == code);
    if (!part.empty()) CHECK(body["detail"].get<std::string>().find(part) != std::string::npos);
}

}  // namespace

TEST_CASE("store: a POST that is not declared JSON is refused with 415 and nothing is written", "[integration][store][guard]") {
    test::StoreFixture f;
    const auto port = f.app->port();
    for (const char* type : {"text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                             "multipart/form-data; boundary=b", "application/json; charset=iso-8859-1"}) {
        INFO(type);
        require_refused(testing::python_request(port, "POST", "/events", {{"Content-Type", type}}, kEvent), 415,
                        "unsupported_media_type", "application/json");
    }
    require_refused(testing::python_request(port, "POST", "/events", {}, kEvent), 415, "unsupported_media_type");
    // curl's default for -d is a form.
    auto form = testing::run({"curl", "-s", "-w", "\n%{http_code}", "-XPOST", f.app->url() + "/events", "-d", kEvent});
    CHECK(form.output.substr(form.output.rfind('\n') + 1) == "415");
    CHECK(f.count_rows() == 0);
    // Still serving, and JSON with a charset is JSON.
    auto ok = testing::python_request(port, "POST", "/events", {{"Content-Type", "application/json; charset=utf-8"}}, kEvent);
    INFO(ok.dump());
    CHECK(ok["status"] == 201);
    CHECK(f.count_rows() == 1);
}

TEST_CASE("store: without a token only loopback and allowed Host names are served, reads and streams included",
          "[integration][store][guard]") {
    test::StoreFixture f(std::map<std::string, std::string>{{"ENGRAM_ALLOWED_HOSTS", "engram.lan"}});
    const auto port = f.app->port();
    REQUIRE(f.post(json::parse(kEvent)).status == 201);
    for (const char* host : {"rebind.attacker.example", "rebind.attacker.example:8080", "engram.lan.attacker.example"}) {
        INFO(host);
        for (const char* path : {"/events?after=0", "/events/stream?aggregate_id=user:42", "/aggregates/user:42/events",
                                 "/projections/fast_memory/user:42?as_of=1", "/metrics", "/healthz"}) {
            INFO(path);
            auto r = testing::python_request(port, "GET", path, {{"Host", host}});
            require_refused(r, 421, "host_not_allowed", "ENGRAM_ALLOWED_HOSTS");
            CHECK(r["body"].get<std::string>().find("\"hi\"") == std::string::npos);
        }
        require_refused(
            testing::python_request(port, "POST", "/events", {{"Host", host}, {"Content-Type", "application/json"}}, kEvent), 421,
            "host_not_allowed");
    }
    CHECK(f.count_rows() == 1);
    for (const std::string& host : std::vector<std::string>{"localhost:" + std::to_string(port), "127.0.0.1",
                                                            "[::1]:" + std::to_string(port), "engram.lan:80"}) {
        INFO(host);
        CHECK(testing::python_request(port, "GET", "/events?after=0", {{"Host", host}})["status"] == 200);
    }
    // curl, with the name it resolves itself: localhost.
    auto c = testing::run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
                           "rebind.attacker.example:" + std::to_string(port) + ":127.0.0.1",
                           "http://rebind.attacker.example:" + std::to_string(port) + "/events"});
    CHECK(c.output == "421");
}

TEST_CASE("store: with a token the Host is not checked, the token is", "[integration][store][guard]") {
    test::StoreFixture f(std::map<std::string, std::string>{{"ENGRAM_API_TOKEN", "s3cret"}});
    const auto port = f.app->port();
    require_refused(testing::python_request(port, "GET", "/events", {{"Host", "engram.example.com"}}), 401, "unauthorized");
    auto ok =
        testing::python_request(port, "GET", "/events", {{"Host", "engram.example.com"}, {"Authorization", "Bearer s3cret"}});
    CHECK(ok["status"] == 200);
    // A token does not make text/plain acceptable.
    require_refused(testing::python_request(port, "POST", "/events",
                                            {{"Authorization", "Bearer s3cret"}, {"Content-Type", "text/plain"}}, kEvent),
                    415, "unsupported_media_type");
    CHECK(f.count_rows() == 0);
}
