// A streamed chat-completions answer as a model server sends it, through the provider's own
// assembler, fed in two pieces cut where the input's first byte says: it never throws, the pieces
// handed on are bounded by the caps, a refusal is a model error, and what it accepts satisfies what
// openai_response_fuzz.cpp checks of a non-streamed answer.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engram/core/json.h"
#include "engram/llm/llm.h"

#define FUZZ_CHECK(cond)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            std::fprintf(stderr, "property violated: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                                       \
        }                                                                                       \
    } while (0)

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace engram;
    if (size == 0) return 0;
    std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
    std::size_t cut = in.empty() ? 0 : data[0] % (in.size() + 1);
    llm::StreamLimits limits{1 << 16, 4096, 8};
    std::size_t pieces = 0;
    llm::StreamAssembler a(limits, [&](const llm::Delta& d) {
        ++pieces;
        FUZZ_CHECK(d.text.size() <= limits.max_line);
        if (d.kind == llm::Delta::Kind::tool_call) FUZZ_CHECK(d.index >= 0 && d.index < limits.max_tool_calls);
    });
    auto st = a.feed(in.substr(0, cut));
    if (st) st = a.feed(in.substr(cut));
    if (!st) {
        FUZZ_CHECK(st.error().code == "llm_bad_response" || st.error().code == "llm_error");
        return 0;
    }
    FUZZ_CHECK(pieces <= in.size());
    auto c = a.finish();
    if (!c) {
        const auto& code = c.error().code;
        FUZZ_CHECK(code == "llm_bad_response" || code == "llm_error" || code == "invalid_tool_call");
        return 0;
    }
    FUZZ_CHECK(c->message.tool_calls.size() <= static_cast<std::size_t>(limits.max_tool_calls));
    for (const auto& call : c->message.tool_calls) {
        FUZZ_CHECK(call.arguments.is_object());
        FUZZ_CHECK(!find_nul(call.arguments));
    }
    if (!c->message.tool_calls.empty()) FUZZ_CHECK(c->finish_reason == "tool_calls");
    return 0;
}
