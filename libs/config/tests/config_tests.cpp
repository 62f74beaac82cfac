#include <catch2/catch.hpp>

#include "engram/config/config.h"

using namespace engram::config;

static Env env_of(std::map<std::string, std::string> m) {
    return [m](const std::string& k) -> std::optional<std::string> {
        auto it = m.find(k);
        if (it == m.end()) return std::nullopt;
        return it->second;
    };
}

static Spec demo() {
    Spec s;
    s.add({"DATABASE_URL", "PostgreSQL URL", "", true, url({"postgresql", "postgres"})});
    s.add({"EVENT_STORE_LISTEN", "listen address", "127.0.0.1:8080", false, listen_address()});
    s.add({"ENGRAM_API_TOKEN", "bearer token", "", false, nullptr, true});
    s.add({"MAX_BATCH", "events per commit", "2000", false, int_range(1, 100000)});
    add_logging(s);
    return s;
}

TEST_CASE("config applies defaults and reads the environment", "[unit][config]") {
    auto v = demo().load(env_of({{"DATABASE_URL", "postgresql://x@127.0.0.1/db"}}));
    REQUIRE(v.ok());
    CHECK(v->get("EVENT_STORE_LISTEN") == "127.0.0.1:8080");
    CHECK(v->get("LOG_LEVEL") == "info");
    CHECK(v->get_int("MAX_BATCH") == 2000);
    CHECK_FALSE(v->has("ENGRAM_API_TOKEN"));
}

TEST_CASE("config reports every problem in one line", "[unit][config]") {
    auto v = demo().load(env_of({{"LOG_LEVEL", "loud"}, {"MAX_BATCH", "12x"}, {"EVENT_STORE_LISTEN", "8080"}}));
    REQUIRE_FALSE(v.ok());
    const auto& d = v.error().detail;
    CHECK(d.find("DATABASE_URL is required") != std::string::npos);
    CHECK(d.find("LOG_LEVEL must be one of trace|debug|info|warn|error (got 'loud')") != std::string::npos);
    CHECK(d.find("MAX_BATCH must be an integer between 1 and 100000") != std::string::npos);
    CHECK(d.find("EVENT_STORE_LISTEN must be host:port") != std::string::npos);
    CHECK(d.find('\n') == std::string::npos);
}

TEST_CASE("config never echoes a secret", "[unit][config]") {
    Spec s;
    s.add({"TOKEN", "a secret", "", false, int_range(1, 2), true});
    auto v = s.load(env_of({{"TOKEN", "hunter2"}}));
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().detail.find("hunter2") == std::string::npos);
}

TEST_CASE("a non-loopback listen address needs a token", "[unit][config]") {
    auto spec = demo();
    auto open = spec.load(env_of({{"DATABASE_URL", "postgresql://h/db"}, {"EVENT_STORE_LISTEN", "0.0.0.0:8080"}}));
    REQUIRE(open.ok());
    CHECK_FALSE(check_exposure("EVENT_STORE_LISTEN", *open).ok());
    auto tok = spec.load(
        env_of({{"DATABASE_URL", "postgresql://h/db"}, {"EVENT_STORE_LISTEN", "0.0.0.0:8080"}, {"ENGRAM_API_TOKEN", "t"}}));
    CHECK(check_exposure("EVENT_STORE_LISTEN", *tok).ok());
    auto lo = spec.load(env_of({{"DATABASE_URL", "postgresql://h/db"}}));
    CHECK(check_exposure("EVENT_STORE_LISTEN", *lo).ok());
}

TEST_CASE("listen addresses parse", "[unit][config]") {
    CHECK(parse_listen("127.0.0.1:8080")->port == 8080);
    CHECK(parse_listen("[::1]:80")->host == "::1");
    CHECK_FALSE(parse_listen("127.0.0.1:99999"));
    CHECK_FALSE(parse_listen(":80"));
    CHECK(is_loopback("127.0.0.1"));
    CHECK_FALSE(is_loopback("0.0.0.0"));
}

TEST_CASE("help and .env.example list every setting", "[unit][config]") {
    auto s = demo();
    for (const auto& st : s.settings()) {
        CHECK(s.help().find(st.name) != std::string::npos);
        CHECK(s.env_example().find(st.name + "=") != std::string::npos);
    }
}
