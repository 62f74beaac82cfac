#include <catch2/catch.hpp>

#include "engram/core/glob.h"
#include "engram/core/result.h"
#include "engram/core/strong.h"
#include "engram/core/text.h"
#include "engram/core/time.h"
#include "engram/core/uuid.h"

using namespace engram;

TEST_CASE("uuid parses, prints and rejects malformed text", "[unit][core]") {
    auto u = Uuid::parse("6F9619FF-8B86-D011-B42D-00CF4FC964FF");
    REQUIRE(u);
    CHECK(u->str() == "6f9619ff-8b86-d011-b42d-00cf4fc964ff");
    CHECK_FALSE(Uuid::parse("6f9619ff8b86d011b42d00cf4fc964ff"));
    CHECK_FALSE(Uuid::parse("6f9619ff-8b86-d011-b42d-00cf4fc964fg"));
    CHECK_FALSE(Uuid::parse(""));
    auto a = Uuid::v4(), b = Uuid::v4();
    CHECK(a != b);
    CHECK(a.str()[14] == '4');
}

TEST_CASE("uuid v5 matches the RFC 4122 reference vector", "[unit][core]") {
    // Python: uuid.uuid5(uuid.NAMESPACE_DNS, "python.org") == 886313e1-3b8a-5372-9b90-0c9aee199e5d
    auto dns = *Uuid::parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8");
    CHECK(Uuid::v5(dns, "python.org").str() == "886313e1-3b8a-5372-9b90-0c9aee199e5d");
    CHECK(Uuid::v5(dns, "a") == Uuid::v5(dns, "a"));
    CHECK(Uuid::v5(dns, "a") != Uuid::v5(dns, "b"));
}

TEST_CASE("rfc3339 round-trips with milliseconds and Z", "[unit][core]") {
    auto t = parse_rfc3339("2026-11-22T10:00:00.123Z");
    REQUIRE(t);
    CHECK(format_rfc3339(*t) == "2026-11-22T10:00:00.123Z");
    CHECK(format_rfc3339(*parse_rfc3339("2026-11-22T12:00:00+02:00")) == "2026-11-22T10:00:00.000Z");
    CHECK(format_rfc3339(*parse_rfc3339("2026-11-22T10:00:00.5Z")) == "2026-11-22T10:00:00.500Z");
    CHECK(format_rfc3339(SysTime(std::chrono::milliseconds(-1))) == "1969-12-31T23:59:59.999Z");
    CHECK(format_rfc3339(SysTime(std::chrono::milliseconds(0))) == "1970-01-01T00:00:00.000Z");
    CHECK(format_rfc3339(*parse_rfc3339("9999-12-31T23:59:59.999Z")) == "9999-12-31T23:59:59.999Z");
    CHECK_FALSE(parse_rfc3339("2026-11-22"));
    CHECK_FALSE(parse_rfc3339("2026-13-22T10:00:00Z"));
    CHECK_FALSE(parse_rfc3339("2026-02-30T10:00:00Z"));
    CHECK_FALSE(parse_rfc3339("2026-11-22T10:00:00"));
    CHECK_FALSE(parse_rfc3339("2026-11-22T10:00:00Zjunk"));
}

TEST_CASE("glob matches exact names and trailing-star prefixes", "[unit][core]") {
    CHECK(glob_match("Message*", "MessageReceived"));
    CHECK(glob_match("Message*", "Message"));
    CHECK_FALSE(glob_match("Message*", "TriggerReceived"));
    CHECK(glob_match("MessageReceived", "MessageReceived"));
    CHECK_FALSE(glob_match("MessageReceived", "MessageReceivedX"));
    CHECK(glob_match("*", "Anything"));
    CHECK(glob_valid("Message*"));
    CHECK(glob_valid("*"));
    CHECK_FALSE(glob_valid(""));
    CHECK_FALSE(glob_valid("*Received"));
    CHECK_FALSE(glob_valid("Me*ss*"));
}

TEST_CASE("strong types compare and keep their kind", "[unit][core]") {
    GlobalPosition p{5};
    CHECK(p.next() == GlobalPosition{6});
    CHECK(p < GlobalPosition{7});
    static_assert(!std::is_convertible_v<GlobalPosition, AggregateVersion>);
    static_assert(!std::is_convertible_v<std::int64_t, GlobalPosition>);
}

TEST_CASE("result carries a value or an error", "[unit][core]") {
    Result<int> r = 3;
    CHECK(r.ok());
    CHECK(*r == 3);
    Result<int> e = Error::make("not_found", "no such event");
    CHECK_FALSE(e.ok());
    CHECK(e.error().code == "not_found");
}

TEST_CASE("trim and utf8_length", "[unit][core]") {
    CHECK(trim("  a b \t\r\n") == "a b");
    CHECK(trim(" \n ") == "");
    CHECK(trim("") == "");
    CHECK(utf8_length("") == 0);
    CHECK(utf8_length("abc") == 3);
    CHECK(utf8_length("héllo") == 5);
    CHECK(utf8_length("日本") == 2);
    CHECK(utf8_length("\xF0\x9F\x98\x80") == 1);  // one emoji, 4 bytes
}

TEST_CASE("redact_credentials masks the secrets of connection strings", "[unit][core]") {
    CHECK(redact_credentials("nats://s3cret@127.0.0.1:4222") == "nats://***@127.0.0.1:4222");
    CHECK(redact_credentials("nats://tok@a:1,nats://u:pw@b:2") == "nats://***@a:1,nats://u:***@b:2");
    CHECK(redact_credentials("postgresql://engram:hunter2@db:5432/engram?sslmode=require") ==
          "postgresql://engram:***@db:5432/engram?sslmode=require");
    CHECK(redact_credentials("postgresql://db/engram?user=x&password=hunter2&sslmode=disable") ==
          "postgresql://db/engram?user=x&password=***&sslmode=disable");
    CHECK(redact_credentials("host=a,b user=engram password='p w\\'d' target_session_attrs=read-write") ==
          "host=a,b user=engram password=*** target_session_attrs=read-write");
    CHECK(redact_credentials("http://127.0.0.1:8080/events") == "http://127.0.0.1:8080/events");
    CHECK(redact_credentials("no url here") == "no url here");
    // The password may hold '@': user info ends at the last '@' of the authority.
    CHECK(redact_credentials("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db");
    for (const char* secret : {"hunter2", "s3cret"}) {
        auto out =
            redact_credentials(std::string("x postgresql://u:") + secret + "@h/db nats://" + secret + "@n:1 password=" + secret);
        CHECK(out.find(secret) == std::string::npos);
    }
}
