#include "engram/core/time.h"

#include <cstdio>
#include <ctime>

namespace engram {

SysTime now_ms() { return std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now()); }

std::string format_rfc3339(SysTime t) {
    auto ms = t.time_since_epoch().count();
    std::time_t secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    int milli = static_cast<int>(ms - static_cast<long long>(secs) * 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    // Digits written by hand: snprintf was a visible share of folding a log (a timestamp per message).
    int year = tm.tm_year + 1900;
    if (year < 0 || year > 9999) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", year, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                      tm.tm_min, tm.tm_sec, milli);
        return buf;
    }
    std::string out = "0000-00-00T00:00:00.000Z";
    auto put = [&](std::size_t at, int v, int width) {
        for (int i = width - 1; i >= 0; --i, v /= 10) out[at + static_cast<std::size_t>(i)] = static_cast<char>('0' + v % 10);
    };
    put(0, year, 4);
    put(5, tm.tm_mon + 1, 2);
    put(8, tm.tm_mday, 2);
    put(11, tm.tm_hour, 2);
    put(14, tm.tm_min, 2);
    put(17, tm.tm_sec, 2);
    put(20, milli, 3);
    return out;
}

static bool digits(std::string_view s, std::size_t pos, std::size_t n, int& out) {
    if (pos + n > s.size()) return false;
    out = 0;
    for (std::size_t i = pos; i < pos + n; ++i) {
        if (s[i] < '0' || s[i] > '9') return false;
        out = out * 10 + (s[i] - '0');
    }
    return true;
}

std::optional<SysTime> parse_rfc3339(std::string_view s) {
    int Y, M, D, h, m, sec;
    if (!digits(s, 0, 4, Y) || s.size() < 20 || s[4] != '-' || !digits(s, 5, 2, M) || s[7] != '-' || !digits(s, 8, 2, D) ||
        (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !digits(s, 11, 2, h) || s[13] != ':' || !digits(s, 14, 2, m) ||
        s[16] != ':' || !digits(s, 17, 2, sec))
        return std::nullopt;
    if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60) return std::nullopt;
    std::size_t i = 19;
    int milli = 0;
    if (i < s.size() && s[i] == '.') {
        ++i;
        int nd = 0;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
            if (nd < 3) milli = milli * 10 + (s[i] - '0');
            ++nd;
            ++i;
        }
        if (nd == 0) return std::nullopt;
        for (int k = nd; k < 3; ++k) milli *= 10;
    }
    long offset_s = 0;
    if (i < s.size() && (s[i] == 'Z' || s[i] == 'z')) {
        ++i;
    } else if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
        int oh, om;
        if (!digits(s, i + 1, 2, oh) || i + 3 >= s.size() || s[i + 3] != ':' || !digits(s, i + 4, 2, om)) return std::nullopt;
        offset_s = (oh * 3600L + om * 60L) * (s[i] == '+' ? 1 : -1);
        i += 6;
    } else {
        return std::nullopt;
    }
    if (i != s.size()) return std::nullopt;
    using namespace std::chrono;
    auto days = sys_days(year{Y} / month{static_cast<unsigned>(M)} / day{static_cast<unsigned>(D)});
    if (!year_month_day(year{Y} / month{static_cast<unsigned>(M)} / day{static_cast<unsigned>(D)}).ok()) return std::nullopt;
    auto t = time_point_cast<milliseconds>(days) + hours(h) + minutes(m) + seconds(sec) + milliseconds(milli) - seconds(offset_s);
    return SysTime(t);
}

}  // namespace engram
