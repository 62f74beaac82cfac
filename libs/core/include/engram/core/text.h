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

// `s` with the secrets of connection strings masked, for logs and error messages: the user info of
// every URL in it ("nats://tok@a:4222,nats://u:pw@b:4222" -> "nats://***@a:4222,nats://u:***@b:4222"),
// and the value of libpq's `password=` keyword.
std::string redact_credentials(std::string_view s);

}  // namespace engram
