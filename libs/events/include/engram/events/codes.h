#pragma once
// The stable machine codes of errors (`{"error": "<code>", "detail": ...}` in the HTTP APIs). The event
// store, the gateway, proto/openapi.yaml and the tests all use these names.
#include <string_view>

namespace engram::events::codes {

// 400
inline constexpr std::string_view invalid_json = "invalid_json";            // body is not JSON
inline constexpr std::string_view invalid_event = "invalid_event";          // envelope field missing / wrong type
inline constexpr std::string_view schema_violation = "schema_violation";    // `data` fails its type's schema
inline constexpr std::string_view invalid_parameter = "invalid_parameter";  // bad query/path parameter
inline constexpr std::string_view invalid_request = "invalid_request";      // gateway body (POST /trigger) field error
// 401, 403, 404, 405
inline constexpr std::string_view unauthorized = "unauthorized";
inline constexpr std::string_view namespace_not_allowed = "namespace_not_allowed";  // gateway: another channel's session/user
inline constexpr std::string_view not_found = "not_found";
inline constexpr std::string_view method_not_allowed = "method_not_allowed";
// 409: `version_conflict` carries top-level integers `expected` and `actual`
inline constexpr std::string_view id_conflict = "id_conflict";
inline constexpr std::string_view version_conflict = "version_conflict";
// 413, 415, 421, 429, 500, 503
inline constexpr std::string_view payload_too_large = "payload_too_large";
inline constexpr std::string_view unsupported_media_type = "unsupported_media_type";  // a POST body not declared JSON
inline constexpr std::string_view host_not_allowed = "host_not_allowed";  // no token and a Host that is not loopback/allowed
inline constexpr std::string_view rate_limited = "rate_limited";          // web chat: too many messages (Retry-After)
inline constexpr std::string_view too_many_streams = "too_many_streams";  // web chat: too many open event streams
inline constexpr std::string_view internal = "internal";
inline constexpr std::string_view unavailable = "unavailable";
// Not an HTTP error: a catalog or schema document that the library cannot use (a build bug).
inline constexpr std::string_view invalid_schema = "invalid_schema";

}  // namespace engram::events::codes
