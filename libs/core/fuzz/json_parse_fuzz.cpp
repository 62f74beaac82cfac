// parse_json against nlohmann's own parser: it accepts exactly the documents nlohmann accepts that
// nest at most kMaxJsonDepth deep, hold only numbers that survive as written and no raw NUL byte, and
// what it gives back survives a dump and a second parse unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engram/core/json.h"

#define FUZZ_CHECK(cond)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            std::fprintf(stderr, "property violated: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                                       \
        }                                                                                       \
    } while (0)

// The deepest container of well-formed JSON text, counted on the text: a value overwritten by a
// repeated key is gone from the parsed value but was still nested in the input.
static int text_depth(std::string_view text) {
    int depth = -1, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > deepest) deepest = depth;
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return deepest;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto ours = engram::parse_json(text);
    // nlohmann's lexer ends the input at a NUL byte (a finding of this target): refused outright.
    if (text.find('\0') != std::string_view::npos) {
        FUZZ_CHECK(!ours.ok());
        FUZZ_CHECK(ours.error().detail.find("a NUL byte") != std::string::npos);
        return 0;
    }
    // nlohmann's parser does not recurse, and inputs are short: safe to build however deep.
    auto reference = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (ours.ok()) {
        FUZZ_CHECK(!reference.is_discarded());
        FUZZ_CHECK(engram::json_depth(*ours) <= engram::kMaxJsonDepth);
        FUZZ_CHECK(*ours == reference);
        auto again = engram::parse_json(ours->dump());
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(*again == *ours);
    } else {
        FUZZ_CHECK(ours.error().code == "invalid_json");
        FUZZ_CHECK(!ours.error().detail.empty());
        (void)nlohmann::json(ours.error().detail).dump();  // valid UTF-8, or this throws: a finding
        // Refused although nlohmann reads it: only for the depth or a number.
        if (!reference.is_discarded()) {
            const auto& d = ours.error().detail;
            bool too_deep = text_depth(text) > engram::kMaxJsonDepth;
            FUZZ_CHECK(too_deep == (d.find("nesting deeper than") != std::string::npos));
            FUZZ_CHECK(too_deep || d.find("number out of range") != std::string::npos ||
                       d.find("integer beyond 64 bits") != std::string::npos);
        }
    }
    return 0;
}
