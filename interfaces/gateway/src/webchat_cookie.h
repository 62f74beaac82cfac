#pragma once
// The web chat's session cookie: `engram_chat=<session uuid>.<issued, Unix s>.<hex HMAC-SHA256(key,
// "engram-webchat-session-v2:<uuid>.<issued>")>`. The issue time is inside the signed value, so a
// cookie cannot be made younger than it is: it is valid for kMaxAge after it was issued, and one
// older than kRotateAfter is re-issued (same session, new issue time) on the next request, so a
// chat in use never expires while a stolen or forgotten cookie does.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace engram::gateway {

struct SessionCookie {
    std::string uuid;  // the session: session:web:<uuid>, user web:<uuid>
    std::int64_t issued = 0;
};

class CookieSigner {
public:
    static constexpr const char* kName = "engram_chat";
    static constexpr std::int64_t kMaxAge = 30 * 24 * 3600;
    static constexpr std::int64_t kRotateAfter = 7 * 24 * 3600;
    static constexpr std::int64_t kFutureSkew = 300;  // an issue time this far ahead is a clock step, later is forged

    explicit CookieSigner(std::string key) : key_(std::move(key)) {}

    std::string sign(const std::string& uuid, std::int64_t issued) const;
    // The session of a value that verifies and is neither expired nor from the future.
    std::optional<SessionCookie> verify(std::string_view value, std::int64_t now) const;
    // The first engram_chat cookie of a Cookie header that verifies.
    std::optional<SessionCookie> from_header(std::string_view cookie_header, std::int64_t now) const;
    static bool needs_rotation(const SessionCookie& c, std::int64_t now) { return now - c.issued > kRotateAfter; }
    // The Set-Cookie value of a cookie issued now: Path=/, Max-Age=kMaxAge, HttpOnly, SameSite=Lax, Secure when asked.
    static std::string set_cookie(const std::string& value, bool secure);

private:
    std::string key_;
};

}  // namespace engram::gateway
