// Query strings as every request brings them: parse_query and url_decode take any bytes, decoding
// never grows the text, and url_encode is undone by url_decode (also when parsed back as a query).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "engram/http/url.h"

#define FUZZ_CHECK(cond)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            std::fprintf(stderr, "property violated: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                                       \
        }                                                                                       \
    } while (0)

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace engram::http;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    FUZZ_CHECK(url_decode(text).size() <= text.size());
    FUZZ_CHECK(url_decode(text, true).size() <= text.size());
    FUZZ_CHECK(url_decode(url_encode(text)) == text);
    FUZZ_CHECK(url_decode(url_encode(text), true) == text);

    auto q = parse_query(text);
    std::string rebuilt;
    for (const auto& [k, v] : q) {
        FUZZ_CHECK(!k.empty() || !v.empty() || text.find('=') != std::string_view::npos);
        rebuilt += (rebuilt.empty() ? "" : "&") + url_encode(k) + "=" + url_encode(v);
    }
    // The encoded form of what was parsed parses to the same map.
    FUZZ_CHECK(parse_query(rebuilt) == q);
    return 0;
}
