// A chat-completions answer as a model server sends it, through the provider's own parse: it never
// throws, refuses with a model error, and what it accepts can be stored by the AI processor (arguments
// are objects within kMaxArgumentsDepth, no U+0000 anywhere) and sent back to the model.
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

static bool has_nul(const std::string& s) { return s.find('\0') != std::string::npos; }

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace engram;
    auto c = llm::from_openai_text(std::string_view(reinterpret_cast<const char*>(data), size));
    if (!c) {
        const auto& code = c.error().code;
        FUZZ_CHECK(code == "llm_bad_response" || code == "llm_error" || code == "invalid_tool_call");
        FUZZ_CHECK(!c.error().detail.empty());
        return 0;
    }
    const auto& m = c->message;
    FUZZ_CHECK(!m.role.empty());
    FUZZ_CHECK(!has_nul(m.role) && !has_nul(m.content) && !has_nul(c->finish_reason) && !has_nul(c->model));
    FUZZ_CHECK(c->usage.prompt_tokens >= 0 && c->usage.completion_tokens >= 0 && c->usage.total_tokens >= 0);
    if (!m.tool_calls.empty()) FUZZ_CHECK(c->finish_reason == "tool_calls");
    for (const auto& call : m.tool_calls) {
        FUZZ_CHECK(!call.name.empty() && !call.id.empty());
        FUZZ_CHECK(call.arguments.is_object());
        FUZZ_CHECK(json_depth(call.arguments) <= llm::kMaxArgumentsDepth);
        FUZZ_CHECK(!find_nul(call.arguments));
        FUZZ_CHECK(!has_nul(call.name) && !has_nul(call.id) && !has_nul(call.raw_arguments));
    }
    // The next request carries this message back to the model.
    llm::Request next;
    next.messages.push_back(m);
    FUZZ_CHECK(!llm::to_openai(next, "model").dump().empty());
    return 0;
}
