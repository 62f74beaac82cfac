#include <catch2/catch.hpp>

#include "signature.h"

using namespace engram::gateway;

TEST_CASE("HMAC-SHA256 matches the RFC 4231 test vector", "[unit][gateway]") {
    // RFC 4231 test case 2.
    CHECK(hmac_sha256_hex("Jefe", "what do ya want for nothing?") ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("constant-time comparison and secrets parsing", "[unit][gateway]") {
    CHECK(constant_time_equal("abc", "abc"));
    CHECK_FALSE(constant_time_equal("abc", "abd"));
    CHECK_FALSE(constant_time_equal("abc", "abcd"));
    auto s = parse_secrets("github=s1,stripe=s2");
    REQUIRE(s);
    CHECK(s->at("github") == "s1");
    CHECK(s->at("stripe") == "s2");
    CHECK_FALSE(parse_secrets("github"));
    CHECK_FALSE(parse_secrets("=x"));
    CHECK_FALSE(parse_secrets("a=1,b="));
}
