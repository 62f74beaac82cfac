#include "engram/core/text.h"

#include <algorithm>

namespace engram {

std::string trim(std::string_view s) {
    auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string_view::npos) return "";
    auto e = s.find_last_not_of(" \t\r\n");
    return std::string(s.substr(b, e - b + 1));
}

std::size_t utf8_length(std::string_view s) {
    std::size_t n = 0;
    for (unsigned char c : s)
        if ((c & 0xC0) != 0x80) ++n;
    return n;
}

std::string redact_credentials(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    std::size_t i = 0;
    while (i < s.size()) {
        auto scheme = s.find("://", i);
        auto kw = s.find("password=", i);
        if (scheme == std::string_view::npos && kw == std::string_view::npos) break;
        if (kw != std::string_view::npos && (scheme == std::string_view::npos || kw < scheme)) {
            // libpq keyword form: password=secret or password='quoted secret'
            out.append(s.substr(i, kw + 9 - i));
            auto v = kw + 9;
            auto end = v;
            if (end < s.size() && s[end] == '\'') {
                ++end;
                while (end < s.size() && s[end] != '\'') end += (s[end] == '\\') ? 2 : 1;
                end = std::min(end + 1, s.size());
            } else {
                while (end < s.size() && s[end] != ' ' && s[end] != '&') ++end;
            }
            out.append("***");
            i = end;
            continue;
        }
        auto start = scheme + 3;
        out.append(s.substr(i, start - i));
        // The authority ends at the first '/', '?', '#', ',' or whitespace; user info ends at its last '@'.
        auto end = s.find_first_of("/?#, \t\n", start);
        if (end == std::string_view::npos) end = s.size();
        auto authority = s.substr(start, end - start);
        auto at = authority.rfind('@');
        if (at != std::string_view::npos) {
            auto user = authority.substr(0, at);
            auto colon = user.find(':');
            if (colon == std::string_view::npos)
                out.append("***");  // a token alone
            else
                out.append(user.substr(0, colon + 1)).append("***");
            out.append(authority.substr(at));
        } else {
            out.append(authority);
        }
        i = end;
    }
    out.append(s.substr(i));
    return out;
}

}  // namespace engram
