// from_openai on answers no well-behaved server sends: nothing throws, nothing reaches the AI
// processor that its events cannot store.
#include <catch2/catch.hpp>

#include "engram/core/json.h"
#include "engram/llm/llm.h"

using namespace engram;
using nlohmann::json;

namespace {

std::string tool_call_answer(const std::string& arguments_json_text) {
    return json{{"choices",
                 {{{"message",
                    {{"role", "assistant"},
                     {"tool_calls", {{{"id", "c1"}, {"function", {{"name", "t"}, {"arguments", arguments_json_text}}}}}}}}}}}}
        .dump();
}

std::string nested_args(int levels) {
    std::string s;
    for (int i = 1; i < levels; ++i) s += "{\"a\":";
    return s + "{}" + std::string(static_cast<std::size_t>(levels - 1), '}');
}

}  // namespace

TEST_CASE("a model answer nested too deep or with numbers out of range is llm_bad_response", "[unit][llm]") {
    auto deep = llm::from_openai_text(std::string(100000, '[') + std::string(100000, ']'));
    REQUIRE_FALSE(deep.ok());
    CHECK(deep.error().code == "llm_bad_response");
    CHECK(deep.error().detail.find("the model's answer has nesting deeper than 64 levels") != std::string::npos);
    auto big = llm::from_openai_text(R"({"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1e400}})");
    REQUIRE_FALSE(big.ok());
    CHECK(big.error().code == "llm_bad_response");
    CHECK(big.error().detail.find("number out of range") != std::string::npos);
}

TEST_CASE("tool arguments may nest as deep as a ToolCalled event holds, not deeper", "[unit][llm]") {
    // kMaxArgumentsDepth levels below the arguments object: fine.
    auto ok = llm::from_openai_text(tool_call_answer(nested_args(llm::kMaxArgumentsDepth + 1)));
    REQUIRE(ok.ok());
    CHECK(json_depth(ok->message.tool_calls.at(0).arguments) == llm::kMaxArgumentsDepth);
    auto no = llm::from_openai_text(tool_call_answer(nested_args(llm::kMaxArgumentsDepth + 2)));
    REQUIRE_FALSE(no.ok());
    CHECK(no.error().code == "invalid_tool_call");
    CHECK(no.error().detail.find("nesting deeper than 60 levels") != std::string::npos);
    CHECK(no.error().extra["raw_arguments"] == nested_args(llm::kMaxArgumentsDepth + 2));
    // Arguments given as an object (some servers) meet the same limit.
    auto as_object = json::parse(tool_call_answer("{}"));
    as_object["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] =
        json::parse(nested_args(llm::kMaxArgumentsDepth + 2));
    auto obj = llm::from_openai(as_object);
    REQUIRE_FALSE(obj.ok());
    CHECK(obj.error().code == "invalid_tool_call");
    // Numbers inside the arguments string are bounded too.
    auto num = llm::from_openai_text(tool_call_answer(R"({"n":1e999})"));
    REQUIRE_FALSE(num.ok());
    CHECK(num.error().code == "invalid_tool_call");
    CHECK(num.error().detail.find("the arguments string has a number out of range") != std::string::npos);
}

TEST_CASE("odd fields of a model answer are tolerated, never thrown (fuzz findings)", "[unit][llm]") {
    // role of another type (json::value() used to throw type_error), usage counts no int holds (the
    // conversion of 1e300 was undefined behaviour), U+0000 anywhere (the store cannot hold it).
    auto c =
        llm::from_openai_text(R"({"choices":[{"message":{"role":7,"content":"a\u0000b","tool_calls":[{"id":"i\u0000","function":)"
                              R"({"name":"n\u0000","arguments":"{\"k\\u0000\":\"v\\u0000\"}"}}]}}],"model":"m\u0000",)"
                              R"("usage":{"prompt_tokens":1e300,"completion_tokens":-5,"total_tokens":"x"}})");
    REQUIRE(c.ok());
    CHECK(c->message.role == "assistant");
    CHECK(c->message.content ==
          "a\xEF\xBF\xBD"
          "b");
    CHECK(c->model == "m\xEF\xBF\xBD");
    CHECK(c->usage.prompt_tokens == 0);
    CHECK(c->usage.completion_tokens == 0);
    CHECK(c->usage.total_tokens == 0);
    const auto& call = c->message.tool_calls.at(0);
    CHECK(call.id == "i\xEF\xBF\xBD");
    CHECK(call.name == "n\xEF\xBF\xBD");
    CHECK_FALSE(find_nul(call.arguments));
    CHECK(call.raw_arguments.find('\0') == std::string::npos);
    // Found by the fuzzer: a count beyond int became a negative number of tokens.
    auto wrapped =
        llm::from_openai_text(R"({"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":2777777777777020}})");
    REQUIRE(wrapped.ok());
    CHECK(wrapped->usage.prompt_tokens == 0);
    CHECK(wrapped->usage.total_tokens == 0);
}
