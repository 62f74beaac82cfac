#pragma once
// Small text helpers every layer needs (settings, chat input, schemas).
#include <cstddef>
#include <string>
#include <string_view>

namespace engram {

// `s` without leading and trailing spaces, tabs, CR and LF.
std::string trim(std::string_view s);

// Number of Unicode code points in UTF-8 text (continuation bytes are not counted).
std::size_t utf8_length(std::string_view s);

}  // namespace engram
