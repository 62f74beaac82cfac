#pragma once
#include <string_view>

namespace engram {

// The type filter of the API: an exact name, or a prefix followed by one trailing `*`
// (`Message*`); a lone `*` matches everything.
bool glob_match(std::string_view pattern, std::string_view value);
// True when pattern is a valid filter: non-empty, at most one `*` and only at the end.
bool glob_valid(std::string_view pattern);

}  // namespace engram
