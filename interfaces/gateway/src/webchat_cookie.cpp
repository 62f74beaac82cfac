#include "webchat_cookie.h"

#include "engram/core/text.h"
#include "engram/core/uuid.h"
#include "signature.h"

namespace engram::gateway {

std::string CookieSigner::sign(const std::string& uuid, std::int64_t issued) const {
    const std::string body = uuid + "." + std::to_string(issued);
    return body + "." + hmac_sha256_hex(key_, "engram-webchat-session-v2:" + body);
}

std::optional<SessionCookie> CookieSigner::verify(std::string_view value, std::int64_t now) const {
    auto first = value.find('.');
    if (first == std::string_view::npos) return std::nullopt;
    auto second = value.find('.', first + 1);
    if (second == std::string_view::npos) return std::nullopt;
    std::string uuid(value.substr(0, first));
    std::string issued_text(value.substr(first + 1, second - first - 1));
    auto parsed = Uuid::parse(uuid);
    if (!parsed || parsed->str() != uuid) return std::nullopt;
    if (issued_text.empty() || issued_text.size() > 12) return std::nullopt;
    std::int64_t issued = 0;
    for (char c : issued_text) {
        if (c < '0' || c > '9') return std::nullopt;
        issued = issued * 10 + (c - '0');
    }
    if (!constant_time_equal(value, sign(uuid, issued))) return std::nullopt;
    if (issued > now + kFutureSkew || now - issued > kMaxAge) return std::nullopt;
    return SessionCookie{uuid, issued};
}

std::optional<SessionCookie> CookieSigner::from_header(std::string_view all, std::int64_t now) const {
    while (!all.empty()) {
        auto semi = all.find_first_of(";,");
        std::string part = trim(all.substr(0, semi));
        all = semi == std::string_view::npos ? std::string_view() : all.substr(semi + 1);
        auto eq = part.find('=');
        if (eq == std::string::npos || trim(std::string_view(part).substr(0, eq)) != kName) continue;
        if (auto c = verify(trim(std::string_view(part).substr(eq + 1)), now)) return c;
    }
    return std::nullopt;
}

std::string CookieSigner::set_cookie(const std::string& value, bool secure) {
    // Lax, not Strict: a link to the chat from another site (a top-level GET) must carry the cookie,
    // or the page would hand out a new session and the user's conversation would be gone. Cross-site
    // POSTs and subresource requests still go without it.
    std::string c =
        std::string(kName) + "=" + value + "; Path=/; Max-Age=" + std::to_string(kMaxAge) + "; HttpOnly; SameSite=Lax";
    if (secure) c += "; Secure";
    return c;
}

}  // namespace engram::gateway
