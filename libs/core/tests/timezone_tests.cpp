#include <catch2/catch.hpp>
#include <cstdlib>
#include <ctime>
#include <fstream>

#include "engram/core/timezone.h"

using namespace engram;

namespace {

SysSeconds utc(int y, int mo, int d, int h, int mi) {
    return SysSeconds(std::chrono::seconds(LocalTime{y, mo, d, h, mi, 0}.as_utc_seconds()));
}

TimeZone zone(const char* name) {
    auto z = TimeZone::load(name);
    REQUIRE(z);
    return *z;
}

}  // namespace

TEST_CASE("a wall-clock time in an IANA zone names one instant, gaps and repeated hours included", "[unit][timezone]") {
    auto berlin = zone("Europe/Berlin");
    CHECK(berlin.to_utc({2026, 12, 2, 9, 0, 0}) == utc(2026, 12, 2, 8, 0));
    CHECK(berlin.to_utc({2026, 7, 2, 9, 0, 0}) == utc(2026, 7, 2, 7, 0));
    // 2026-03-29 02:30 does not exist in Berlin: read with the winter offset, it is 03:30 CEST.
    CHECK(berlin.to_utc({2026, 3, 29, 2, 30, 0}) == utc(2026, 3, 29, 1, 30));
    // 2026-10-25 02:30 happens twice: the first one (CEST).
    CHECK(berlin.to_utc({2026, 10, 25, 2, 30, 0}) == utc(2026, 10, 25, 0, 30));
    CHECK(format_local_rfc3339(berlin, utc(2026, 12, 2, 8, 0)) == "2026-12-02T09:00:00+01:00");

    auto ny = zone("America/New_York");
    CHECK(ny.to_utc({2026, 7, 1, 9, 0, 0}) == utc(2026, 7, 1, 13, 0));
    CHECK(format_local_rfc3339(ny, utc(2026, 1, 1, 0, 0)) == "2025-12-31T19:00:00-05:00");
    auto kolkata = zone("Asia/Kolkata");
    CHECK(kolkata.offset_at(utc(2026, 1, 1, 0, 0)) == 5 * 3600 + 1800);

    // Past the file's last transition the footer's rule decides (2050: no table entry in any build).
    CHECK(berlin.to_utc({2050, 7, 1, 12, 0, 0}) == utc(2050, 7, 1, 10, 0));
    CHECK(berlin.to_utc({2050, 1, 1, 12, 0, 0}) == utc(2050, 1, 1, 11, 0));
    auto sydney = zone("Australia/Sydney");  // summer time across the new year
    CHECK(sydney.to_utc({2050, 1, 15, 12, 0, 0}) == utc(2050, 1, 15, 1, 0));
    CHECK(sydney.to_utc({2050, 7, 15, 12, 0, 0}) == utc(2050, 7, 15, 2, 0));

    auto u = zone("UTC");
    CHECK(u.offset_at(utc(2026, 1, 1, 0, 0)) == 0);
    CHECK(u.to_utc({2026, 5, 5, 5, 5, 0}) == utc(2026, 5, 5, 5, 5));
}

TEST_CASE("time zone offsets agree with glibc's localtime over 1970-2080", "[unit][timezone]") {
    // glibc reads the same files with code nobody here wrote: every 7 hours and 13 minutes (so
    // every hour of the day and day of the week comes round) the offsets must match.
    for (const char* name : {"Europe/Berlin", "America/New_York", "Australia/Sydney", "America/Santiago", "Asia/Tehran",
                             "Pacific/Chatham", "Europe/Dublin", "America/Sao_Paulo", "Africa/Casablanca"}) {
        auto z = zone(name);
        REQUIRE(setenv("TZ", name, 1) == 0);
        tzset();
        int mismatches = 0;
        for (std::int64_t t = 0; t < 3471292800; t += 7 * 3600 + 13 * 60) {
            std::time_t tt = static_cast<std::time_t>(t);
            std::tm tm{};
            REQUIRE(localtime_r(&tt, &tm) != nullptr);
            if (tm.tm_gmtoff != z.offset_at(SysSeconds(std::chrono::seconds(t)))) {
                if (++mismatches <= 3) UNSCOPED_INFO(name << " at " << t << ": glibc " << tm.tm_gmtoff);
            }
        }
        CHECK(mismatches == 0);
    }
    unsetenv("TZ");
    tzset();
}

TEST_CASE("time zone names from outside are checked before any file is opened", "[unit][timezone]") {
    for (const char* bad :
         {"", "../../etc/passwd", "/etc/localtime", "Europe/../../etc/shadow", "Mars/Olympus_Mons", "Europe/Berlin\n", "a b"}) {
        auto z = TimeZone::load(bad);
        REQUIRE_FALSE(z);
        CHECK(z.error().code == "invalid_time_zone");
    }
    CHECK_FALSE(TimeZone::load(std::string(65, 'A')));
    CHECK_FALSE(TimeZone::load("posixrules/../Europe/Berlin"));
    CHECK_FALSE(TimeZone::load("Europe"));  // a folder
    if (std::ifstream("/usr/share/zoneinfo/right/Europe/Berlin").good()) {
        auto right = TimeZone::load("right/Europe/Berlin");  // leap seconds: not wall-clock time
        REQUIRE_FALSE(right);
        CHECK(right.error().detail.find("leap-second") != std::string::npos);
    }
}

TEST_CASE("local date-times parse strictly", "[unit][timezone]") {
    auto t = LocalTime::parse("2026-12-02T09:00");
    REQUIRE(t);
    CHECK(t->str() == "2026-12-02T09:00:00");
    CHECK(LocalTime::parse("2026-12-02 09:00:30"));
    for (const char* bad : {"2026-02-30T09:00", "2026-12-02", "2026-12-02T25:00", "2026-12-02T09:00Z", "2026-12-02T09:00:00.5",
                            "tomorrow", "99999-01-01T00:00"})
        CHECK_FALSE(LocalTime::parse(bad));
}
