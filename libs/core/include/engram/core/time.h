#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace engram {

using SysTime = std::chrono::time_point<std::chrono::system_clock, std::chrono::milliseconds>;

// RFC 3339 UTC with milliseconds and `Z`: 2026-11-22T10:00:00.123Z
std::string format_rfc3339(SysTime t);
// Accepts RFC 3339 with `Z` or a numeric offset, with or without fractional seconds.
std::optional<SysTime> parse_rfc3339(std::string_view s);
SysTime now_ms();

}  // namespace engram
