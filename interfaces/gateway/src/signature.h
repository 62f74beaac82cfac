#pragma once
// Signed webhooks: HMAC-SHA256 over the raw body, hex, compared in constant time.
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace engram::gateway {

std::string hmac_sha256_hex(std::string_view key, std::string_view data);
std::string sha256_hex(std::string_view data);
bool constant_time_equal(std::string_view a, std::string_view b);
// "source=secret,other=secret2" -> map; nullopt when malformed.
std::optional<std::map<std::string, std::string>> parse_secrets(const std::string& s);

}  // namespace engram::gateway
