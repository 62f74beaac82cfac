#pragma once
// The one way JSON from outside the process becomes a value: HTTP bodies, NATS messages, answers of
// other services (the store, a model, Telegram, an embeddings endpoint). nlohmann's own parser does
// not recurse, but copying, comparing, dumping and destroying a value does: a document nested 100 000
// levels deep parses fine and then overflows the stack of whoever touches it. parse_json refuses it.
//
// Depth: the top-level value is at depth 0 and every value inside a container at depth d is at depth
// d + 1. A document may hold containers up to depth max_depth (default 64): `[]` is depth 0, `[[]]`
// depth 1; a store body `{"data": D}` may give `data` 64 levels of its own (data's innermost object
// is at depth 64). A value placed k levels down in another document keeps max_depth - k for itself.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "engram/core/result.h"

namespace engram {

inline constexpr int kMaxJsonDepth = 64;

// Parses `text` (one RFC 8259 document in UTF-8, nothing after it but whitespace). Errors are
// Error{"invalid_json", detail}, the detail starting with `what` (e.g. "the body"):
//  - not JSON: a syntax error, invalid UTF-8, a lone surrogate such as "\ud800", trailing bytes, a
//    raw NUL byte anywhere (nlohmann alone would stop reading there and ignore the rest):
//    "the body is not valid JSON: syntax error while parsing object - unexpected end of input; expected
//    string literal (at byte 12)";
//  - "the body has nesting deeper than 64 levels (at byte 66)" (max_depth in the detail);
//  - a number that no double holds (1e400, or 1e-400, which would silently become 0) or an integer
//    literal beyond 64 bits (123456789012345678901234567890, which would silently lose digits):
//    "the body has a number out of range: 1e400". Nothing outside is ever silently rounded.
// Accepted as JSON defines it: "\u0000" in strings and keys (see find_nul: PostgreSQL cannot store
// it), "-0" (the integer 0; "-0.0" stays the double -0.0). A key given twice keeps its last value, as
// PostgreSQL's jsonb does.
Result<nlohmann::json> parse_json(std::string_view text, std::string_view what = "the text", int max_depth = kMaxJsonDepth);

// The depth of the deepest container in `v` (0 for a scalar or a container of scalars): parse_json
// accepts exactly the documents with json_depth <= max_depth. Iterative: any value, however deep.
int json_depth(const nlohmann::json& v);

// The JSON pointer ("/a/0/b", "" for `v` itself) of the first string or key holding U+0000, which
// PostgreSQL's jsonb and text columns refuse; nullopt when there is none.
std::optional<std::string> find_nul(const nlohmann::json& v);

// Replaces U+0000 in every string and key of `v` by U+FFFD, for text meant for people (a chat message,
// a model's answer) that must be stored rather than refused.
void replace_nul(nlohmann::json& v);

}  // namespace engram
