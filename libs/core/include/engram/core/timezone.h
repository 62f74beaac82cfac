#pragma once
// IANA time zones from the system's compiled database (TZif files under /usr/share/zoneinfo, or
// $TZDIR), for what a user says in their own time ("tomorrow at 9" in Europe/Berlin). glibc's
// mktime/localtime go through the process-wide TZ variable, which threads cannot share, and GCC 12
// has no std::chrono::locate_zone: hence this small reader.
//
// Times after a zone's last recorded transition use the rule of its POSIX TZ footer (e.g.
// "CET-1CEST,M3.5.0,M10.5.0/3"), so slim TZif files (transitions stop in 2007 for many zones) and
// dates past 2037 are right too. Thread-safe: zones are immutable once loaded, and load() caches.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "engram/core/result.h"

namespace engram {

using SysSeconds = std::chrono::sys_seconds;

// A civil (wall-clock) date and time, without a zone.
struct LocalTime {
    int year = 1970, month = 1, day = 1, hour = 0, minute = 0, second = 0;
    // "YYYY-MM-DDTHH:MM[:SS]" (a 'T' or a space between date and time); nullopt when malformed or
    // out of range.
    static std::optional<LocalTime> parse(std::string_view s);
    std::string str() const;  // "YYYY-MM-DDTHH:MM:SS"
    // The same wall-clock time read as UTC (seconds since the epoch).
    std::int64_t as_utc_seconds() const;
    static LocalTime from_utc_seconds(std::int64_t s);
};

class TimeZone {
public:
    struct Data;
    // "UTC" / "Etc/UTC" need no file. Error "invalid_time_zone" for a malformed or unknown name (no
    // "..", at most 64 characters of letters, digits, '/', '_', '-', '+'), or an unreadable file.
    static Result<TimeZone> load(std::string_view name);

    const std::string& name() const;
    // The UTC offset in seconds at instant `t`.
    int offset_at(SysSeconds t) const;
    // The instant a wall-clock time names in this zone. An ambiguous time (the hour repeated when
    // clocks go back) is its first occurrence; a time in a gap (clocks go forward) is read with the
    // offset before the gap, i.e. it lands that much later (02:30 on a spring-forward night at 3:30).
    SysSeconds to_utc(const LocalTime& local) const;
    LocalTime to_local(SysSeconds t) const;

private:
    explicit TimeZone(std::shared_ptr<const Data> d) : d_(std::move(d)) {}
    std::shared_ptr<const Data> d_;
};

// "2026-12-02T09:00:00+01:00" for instant t in zone z.
std::string format_local_rfc3339(const TimeZone& z, SysSeconds t);

}  // namespace engram
