#include "engram/http/url.h"

namespace engram::http {
namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

std::string url_encode(std::string_view s) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size() * 3);
    for (unsigned char c : s) {
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
            c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back('%');
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 15]);
        }
    }
    return out;
}

std::string url_decode(std::string_view s, bool plus_as_space) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        char c = s[i];
        if (c == '%' && i + 2 < s.size()) {
            int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out.push_back(static_cast<char>(hi * 16 + lo));
                i += 2;
                continue;
            }
        }
        out.push_back(plus_as_space && c == '+' ? ' ' : c);
    }
    return out;
}

std::map<std::string, std::string> parse_query(std::string_view query) {
    std::map<std::string, std::string> out;
    while (!query.empty()) {
        auto amp = query.find('&');
        auto part = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        if (part.empty()) continue;
        auto eq = part.find('=');
        auto key = url_decode(part.substr(0, eq), true);
        auto value = eq == std::string_view::npos ? std::string{} : url_decode(part.substr(eq + 1), true);
        out[std::move(key)] = std::move(value);
    }
    return out;
}

std::string redact_target(std::string_view target) {
    auto q = target.find('?');
    if (q == std::string_view::npos) return std::string(target);
    std::string out(target.substr(0, q + 1));
    auto query = target.substr(q + 1);
    bool first = true;
    while (true) {
        auto amp = query.find('&');
        auto part = query.substr(0, amp);
        if (!first) out.push_back('&');
        first = false;
        auto eq = part.find('=');
        std::string name = url_decode(part.substr(0, eq), true);
        for (auto& c : name)
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        bool secret = name == "access_token" || name == "token" || name == "api_key" || name == "key" || name == "password" ||
                      name == "secret";
        if (secret && eq != std::string_view::npos) {
            out.append(part.substr(0, eq + 1));
            out += "<redacted>";
        } else {
            out.append(part);
        }
        if (amp == std::string_view::npos) break;
        query = query.substr(amp + 1);
    }
    return out;
}

}  // namespace engram::http
