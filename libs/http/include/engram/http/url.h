#pragma once
// Percent-encoding helpers (RFC 3986), shared by the server's request parsing and the client.
#include <map>
#include <string>
#include <string_view>

namespace engram::http {

// Encodes everything but the unreserved characters A-Z a-z 0-9 - . _ ~ as %XX (upper-case hex).
std::string url_encode(std::string_view s);
// Decodes %XX escapes (a malformed escape is kept as is); with plus_as_space, '+' becomes ' '.
std::string url_decode(std::string_view s, bool plus_as_space = false);
// "a=1&b=x+y&c" -> {a:"1", b:"x y", c:""}; percent-decoded, '+' = space, the last duplicate wins.
std::map<std::string, std::string> parse_query(std::string_view query);
// `target` (path and query) with the value of every query parameter that carries a credential
// (access_token, token, api_key, key, password, secret; names compared case-insensitively after
// decoding) replaced by "<redacted>", for logs and error details:
// "/events/stream?aggregate_id=a&access_token=s3cret" -> "/events/stream?aggregate_id=a&access_token=<redacted>".
std::string redact_target(std::string_view target);

}  // namespace engram::http
