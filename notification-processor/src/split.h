#pragma once
// Splitting a long text into Telegram-sized messages.
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace engram::notification {

inline constexpr std::size_t kTelegramLimit = 4096;

// Length as Telegram counts it: UTF-16 code units (a code point above U+FFFF counts 2). Bytes of an
// invalid UTF-8 sequence count 1 each.
std::size_t telegram_length(std::string_view text);

// Splits `text` into parts of at most `limit` units (telegram_length) each, in order. A text that fits
// is returned unchanged as one part. Otherwise each cut is made, preferring in this order, at the last
// paragraph break ("\n\n"), line break, sentence end ([.!?…] then whitespace) or whitespace that keeps
// the part at least half the limit long; failing that at the last such boundary anywhere; failing that
// (one huge word) at the last code-point boundary that fits. A cut is never inside a UTF-8 sequence.
// Whitespace at a cut is dropped (trailing on the part, leading on the rest); no part is empty.
std::vector<std::string> split_message(std::string_view text, std::size_t limit = kTelegramLimit);

}  // namespace engram::notification
