#include "engram/core/timezone.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

namespace engram {

namespace chr = std::chrono;

namespace {

bool parse_int(std::string_view s, std::size_t& i, int digits_min, int digits_max, int& out) {
    int n = 0, v = 0;
    while (i < s.size() && n < digits_max && s[i] >= '0' && s[i] <= '9') {
        v = v * 10 + (s[i] - '0');
        ++i;
        ++n;
    }
    out = v;
    return n >= digits_min;
}

std::int64_t days_from_civil(int y, int m, int d) {
    return chr::sys_days(chr::year(y) / chr::month(static_cast<unsigned>(m)) / chr::day(static_cast<unsigned>(d)))
        .time_since_epoch()
        .count();
}

// A POSIX TZ rule (the TZif footer): "STD offset [DST [offset] [,start[/time],end[/time]]]".
struct PosixRule {
    struct Date {
        char kind = 'M';  // 'J' (1..365, no Feb 29), 'D' (0..365, zero-based), 'M' (month.week.weekday)
        int a = 0, b = 0, c = 0;
        int time = 7200;  // seconds after local midnight (may be negative or past 24 h)
    };
    int std_offset = 0;  // seconds east of UTC
    bool has_dst = false;
    int dst_offset = 0;
    Date start, end;

    // The instant (UTC seconds) of `d` in year `y`, read in the local time of offset `off`.
    static std::int64_t instant(const Date& d, int y, int off) {
        std::int64_t days = 0;
        if (d.kind == 'J') {
            // Day 1..365, February 29 never counted.
            int n = d.a;
            bool leap = chr::year(y).is_leap();
            days = days_from_civil(y, 1, 1) + n - 1 + ((leap && n >= 60) ? 1 : 0);
        } else if (d.kind == 'D') {
            days = days_from_civil(y, 1, 1) + d.a;
        } else {
            auto ym = chr::year(y) / chr::month(static_cast<unsigned>(d.a));
            auto wd = chr::weekday(static_cast<unsigned>(d.c));
            chr::sys_days sd = d.b >= 5 ? chr::sys_days(ym / chr::weekday_last(wd))
                                        : chr::sys_days(ym / chr::weekday_indexed(wd, static_cast<unsigned>(d.b)));
            days = sd.time_since_epoch().count();
        }
        return days * 86400 + d.time - off;
    }

    int offset_at(std::int64_t t) const {
        if (!has_dst) return std_offset;
        int y = static_cast<int>(chr::year_month_day(chr::sys_days(chr::days(t / 86400 - (t % 86400 < 0 ? 1 : 0)))).year());
        std::int64_t s = instant(start, y, std_offset), e = instant(end, y, dst_offset);
        bool dst = s < e ? (t >= s && t < e) : (t < e || t >= s);
        return dst ? dst_offset : std_offset;
    }
};

// [+-]hh[:mm[:ss]], hours up to 167 (POSIX allows 24; RFC 8536 extends it for rule times).
bool parse_hms(std::string_view s, std::size_t& i, int& out) {
    int sign = 1;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) sign = s[i++] == '-' ? -1 : 1;
    int h = 0, m = 0, sec = 0;
    if (!parse_int(s, i, 1, 3, h) || h > 167) return false;
    if (i < s.size() && s[i] == ':') {
        ++i;
        if (!parse_int(s, i, 2, 2, m) || m > 59) return false;
        if (i < s.size() && s[i] == ':') {
            ++i;
            if (!parse_int(s, i, 2, 2, sec) || sec > 59) return false;
        }
    }
    out = sign * (h * 3600 + m * 60 + sec);
    return true;
}

bool parse_name(std::string_view s, std::size_t& i) {
    if (i < s.size() && s[i] == '<') {
        auto close = s.find('>', i);
        if (close == std::string_view::npos) return false;
        i = close + 1;
        return true;
    }
    std::size_t b = i;
    while (i < s.size() && ((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z'))) ++i;
    return i - b >= 3;
}

bool parse_date(std::string_view s, std::size_t& i, PosixRule::Date& d) {
    if (i < s.size() && s[i] == 'M') {
        ++i;
        d.kind = 'M';
        if (!parse_int(s, i, 1, 2, d.a) || d.a < 1 || d.a > 12 || i >= s.size() || s[i++] != '.') return false;
        if (!parse_int(s, i, 1, 1, d.b) || d.b < 1 || d.b > 5 || i >= s.size() || s[i++] != '.') return false;
        if (!parse_int(s, i, 1, 1, d.c) || d.c > 6) return false;
    } else if (i < s.size() && s[i] == 'J') {
        ++i;
        d.kind = 'J';
        if (!parse_int(s, i, 1, 3, d.a) || d.a < 1 || d.a > 365) return false;
    } else {
        d.kind = 'D';
        if (!parse_int(s, i, 1, 3, d.a) || d.a > 365) return false;
    }
    d.time = 7200;
    if (i < s.size() && s[i] == '/') {
        ++i;
        if (!parse_hms(s, i, d.time)) return false;
    }
    return true;
}

std::optional<PosixRule> parse_posix(std::string_view s) {
    PosixRule r;
    std::size_t i = 0;
    int off = 0;
    if (!parse_name(s, i) || !parse_hms(s, i, off)) return std::nullopt;
    r.std_offset = -off;  // POSIX offsets count west of UTC
    if (i == s.size()) return r;
    if (!parse_name(s, i)) return std::nullopt;
    r.has_dst = true;
    r.dst_offset = r.std_offset + 3600;
    if (i < s.size() && s[i] != ',') {
        if (!parse_hms(s, i, off)) return std::nullopt;
        r.dst_offset = -off;
    }
    if (i >= s.size() || s[i++] != ',' || !parse_date(s, i, r.start) || i >= s.size() || s[i++] != ',' ||
        !parse_date(s, i, r.end) || i != s.size())
        return std::nullopt;
    return r;
}

std::int64_t be(const unsigned char* p, int n) {
    std::uint64_t v = 0;
    for (int k = 0; k < n; ++k) v = (v << 8) | p[k];
    if (n == 4) return static_cast<std::int32_t>(static_cast<std::uint32_t>(v));
    return static_cast<std::int64_t>(v);
}

bool valid_name(std::string_view n) {
    if (n.empty() || n.size() > 64 || n.front() == '/' || n.find("..") != std::string_view::npos) return false;
    return std::all_of(n.begin(), n.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '/' || c == '_' || c == '-' ||
               c == '+';
    });
}

}  // namespace

struct TimeZone::Data {
    std::string name;
    std::vector<std::int64_t> transitions;  // UTC seconds, ascending
    std::vector<int> offset_after;          // offset from transitions[k] on
    int initial_offset = 0;                 // before the first transition (time type 0)
    std::optional<PosixRule> rule;          // after the last transition

    int offset_at(std::int64_t t) const {
        if (transitions.empty() || t < transitions.front())
            return rule && transitions.empty() ? rule->offset_at(t) : initial_offset;
        if (t >= transitions.back() && rule) return rule->offset_at(t);
        auto it = std::upper_bound(transitions.begin(), transitions.end(), t);
        return offset_after[static_cast<std::size_t>(it - transitions.begin()) - 1];
    }
};

namespace {

// Real zones stay within ±15 h; the bound keeps to_utc's one-day probes valid and every sum in range.
constexpr std::int64_t kMaxOffset = 26 * 3600;

// RFC 8536: the version 2+ block (64-bit times) follows a version 1 block; the footer holds the rule.
Result<std::shared_ptr<const TimeZone::Data>> parse_tzif(const std::string& name, const std::string& bytes) {
    auto bad = [&](const char* why) { return Error::make("invalid_time_zone", "time zone '" + name + "': " + why); };
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    const std::size_t n = bytes.size();
    auto header = [&](std::size_t at, std::int64_t c[6]) -> bool {
        if (at + 44 > n || bytes.compare(at, 4, "TZif") != 0) return false;
        for (int k = 0; k < 6; ++k) c[k] = be(p + at + 20 + 4 * k, 4);
        for (int k = 0; k < 6; ++k)
            if (c[k] < 0 || c[k] > 100000) return false;
        return true;
    };
    std::int64_t c[6];  // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
    if (!header(0, c)) return bad("not a TZif file");
    const char version = bytes[4];
    std::size_t at = 44;
    int tsize = 4;
    if (version >= '2') {
        at += static_cast<std::size_t>(c[3] * 4 + c[3] + c[4] * 6 + c[5] + c[2] * 8 + c[1] + c[0]);
        if (!header(at, c)) return bad("malformed version 2 header");
        at += 44;
        tsize = 8;
    }
    const auto timecnt = static_cast<std::size_t>(c[3]), typecnt = static_cast<std::size_t>(c[4]);
    const std::size_t need = timecnt * tsize + timecnt + typecnt * 6 + static_cast<std::size_t>(c[5]) +
                             static_cast<std::size_t>(c[2]) * (tsize + 4) + static_cast<std::size_t>(c[1] + c[0]);
    if (typecnt == 0 || at + need > n) return bad("truncated");
    // Leap-second zones ("right/...") count TAI-like seconds: not what a wall clock means.
    if (c[2] != 0) return bad("leap-second zones are not supported");
    auto d = std::make_shared<TimeZone::Data>();
    d->name = name;
    const unsigned char* times = p + at;
    const unsigned char* idx = times + timecnt * tsize;
    const unsigned char* types = idx + timecnt;
    auto type_offset = [&](std::size_t k) { return static_cast<int>(be(types + 6 * k, 4)); };
    for (std::size_t k = 0; k < typecnt; ++k)
        if (std::abs(static_cast<std::int64_t>(be(types + 6 * k, 4))) > kMaxOffset) return bad("a UTC offset over 26 hours");
    d->initial_offset = type_offset(0);
    for (std::size_t k = 0; k < timecnt; ++k) {
        std::size_t ti = idx[k];
        if (ti >= typecnt) return bad("transition to an unknown type");
        std::int64_t t = be(times + k * tsize, tsize);
        if (!d->transitions.empty() && t <= d->transitions.back()) continue;
        d->transitions.push_back(t);
        d->offset_after.push_back(type_offset(ti));
    }
    if (version >= '2') {
        std::size_t f = at + need;
        if (f < n && bytes[f] == '\n') {
            auto e = bytes.find('\n', f + 1);
            if (e != std::string::npos && e > f + 1) {
                d->rule = parse_posix(std::string_view(bytes).substr(f + 1, e - f - 1));
                if (!d->rule) return bad("unreadable POSIX rule in the footer");
                if (std::abs(d->rule->std_offset) > kMaxOffset || std::abs(d->rule->dst_offset) > kMaxOffset)
                    return bad("a UTC offset over 26 hours in the footer");
            }
        }
    }
    return std::shared_ptr<const TimeZone::Data>(std::move(d));
}

}  // namespace

Result<TimeZone> TimeZone::load(std::string_view name_in) {
    std::string name(name_in);
    static std::mutex mu;
    static std::map<std::string, std::shared_ptr<const Data>> cache;
    {
        std::lock_guard lock(mu);
        if (auto it = cache.find(name); it != cache.end()) return TimeZone(it->second);
    }
    if (!valid_name(name))
        return Error::make("invalid_time_zone",
                           "'" + name.substr(0, 80) + "' is not an IANA time zone name (e.g. Europe/Berlin)");
    std::shared_ptr<const Data> data;
    if (name == "UTC" || name == "Etc/UTC" || name == "Z") {
        auto d = std::make_shared<Data>();
        d->name = name;
        data = d;
    } else {
        const char* dir = std::getenv("TZDIR");
        std::string path = std::string(dir && *dir ? dir : "/usr/share/zoneinfo") + "/" + name;
        std::error_code ec;
        if (!std::filesystem::is_regular_file(path, ec))
            return Error::make("invalid_time_zone", "unknown time zone '" + name + "'");
        if (std::filesystem::file_size(path, ec) > (1u << 20) || ec)
            return Error::make("invalid_time_zone", "time zone '" + name + "': file too large or unreadable");
        std::ifstream in(path, std::ios::binary);
        if (!in) return Error::make("invalid_time_zone", "unknown time zone '" + name + "'");
        std::ostringstream ss;
        ss << in.rdbuf();
        std::string bytes = ss.str();
        auto parsed = parse_tzif(name, bytes);
        if (!parsed) return parsed.error();
        data = *parsed;
    }
    std::lock_guard lock(mu);
    if (cache.size() < 1024) cache.emplace(name, data);  // names are validated files: a small, fixed set
    return TimeZone(data);
}

const std::string& TimeZone::name() const { return d_->name; }

int TimeZone::offset_at(SysSeconds t) const { return d_->offset_at(t.time_since_epoch().count()); }

SysSeconds TimeZone::to_utc(const LocalTime& local) const {
    const std::int64_t l = local.as_utc_seconds();
    const int before = d_->offset_at(l - 86400), after = d_->offset_at(l + 86400);
    std::optional<std::int64_t> best;
    for (int o : {before, after}) {
        std::int64_t u = l - o;
        if (d_->offset_at(u) == o && (!best || u < *best)) best = u;
    }
    if (!best) {
        // No offset maps back (a gap) or an offset changed twice within two days: read the wall clock
        // with the offset in force just before it.
        best = l - before;
        if (int o = d_->offset_at(l - d_->offset_at(l)); d_->offset_at(l - o) == o) best = l - o;
    }
    return SysSeconds(chr::seconds(*best));
}

LocalTime TimeZone::to_local(SysSeconds t) const {
    return LocalTime::from_utc_seconds(t.time_since_epoch().count() + offset_at(t));
}

std::optional<LocalTime> LocalTime::parse(std::string_view s) {
    LocalTime t;
    std::size_t i = 0;
    auto expect = [&](char c) { return i < s.size() && s[i++] == c; };
    if (!parse_int(s, i, 4, 4, t.year) || !expect('-') || !parse_int(s, i, 2, 2, t.month) || !expect('-') ||
        !parse_int(s, i, 2, 2, t.day))
        return std::nullopt;
    if (i >= s.size() || (s[i] != 'T' && s[i] != 't' && s[i] != ' ')) return std::nullopt;
    ++i;
    if (!parse_int(s, i, 2, 2, t.hour) || !expect(':') || !parse_int(s, i, 2, 2, t.minute)) return std::nullopt;
    if (i < s.size()) {
        if (!expect(':') || !parse_int(s, i, 2, 2, t.second) || i != s.size()) return std::nullopt;
    }
    auto ymd = chr::year(t.year) / chr::month(static_cast<unsigned>(t.month)) / chr::day(static_cast<unsigned>(t.day));
    if (t.year < 1900 || t.year > 9999 || !ymd.ok() || t.hour > 23 || t.minute > 59 || t.second > 59) return std::nullopt;
    return t;
}

std::string LocalTime::str() const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d", year, month, day, hour, minute, second);
    return buf;
}

std::int64_t LocalTime::as_utc_seconds() const {
    return days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
}

LocalTime LocalTime::from_utc_seconds(std::int64_t s) {
    std::int64_t days = s / 86400, rem = s % 86400;
    if (rem < 0) {
        rem += 86400;
        --days;
    }
    chr::year_month_day ymd{chr::sys_days(chr::days(days))};
    LocalTime t;
    t.year = static_cast<int>(ymd.year());
    t.month = static_cast<int>(static_cast<unsigned>(ymd.month()));
    t.day = static_cast<int>(static_cast<unsigned>(ymd.day()));
    t.hour = static_cast<int>(rem / 3600);
    t.minute = static_cast<int>(rem % 3600 / 60);
    t.second = static_cast<int>(rem % 60);
    return t;
}

std::string format_local_rfc3339(const TimeZone& z, SysSeconds t) {
    int off = z.offset_at(t);
    auto l = LocalTime::from_utc_seconds(t.time_since_epoch().count() + off);
    int a = off < 0 ? -off : off;
    char buf[16];
    std::snprintf(buf, sizeof buf, "%c%02d:%02d", off < 0 ? '-' : '+', a / 3600, a % 3600 / 60);
    return l.str() + buf;
}

}  // namespace engram
