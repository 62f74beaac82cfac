// The remote embeddings client against a server that is not ours: Python's http.server speaking the
// OpenAI /v1/embeddings shape, framing answers in every way real servers do.
#include <catch2/catch.hpp>
#include <cmath>

#include "engram/memory/memory.h"
#include "engram/testing/testing.h"

using namespace engram;
using nlohmann::json;

TEST_CASE("embeddings: 200 from Python's http.server in every framing, without a failure", "[integration][memory]") {
    testing::PyHttpFake fake(json::array({
        {{"method", "POST"},
         {"path", "/v1/embeddings"},
         {"builtin", "openai_embeddings"},
         {"dimensions", 16},
         {"mode", "cycle"},
         {"delay_ms", 2}},
    }));
    auto e = memory::make_embedder(fake.url() + "/v1/", "sk-emb", "py-embed");
    CHECK(e->name() == "openai-compatible:py-embed");
    int failures = 0;
    std::vector<float> first;
    for (int i = 0; i < 200; ++i) {
        auto v = e->embed("likes green tea " + std::to_string(i % 5));
        if (!v || v->size() != 16) {
            ++failures;
            UNSCOPED_INFO("embedding " << i << ": " << (v ? std::to_string(v->size()) + " dimensions" : v.error().detail));
            continue;
        }
        double norm = 0;
        for (float x : *v) norm += double(x) * x;
        if (std::abs(norm - 1.0) > 1e-4) ++failures;
        if (i == 0) first = *v;
        if (i % 5 == 0 && *v != first) ++failures;  // the same text, the same vector
    }
    CHECK(failures == 0);
    auto reqs = fake.requests();
    REQUIRE(reqs.size() == 200);
    auto body = json::parse(reqs[7]["body"].get<std::string>());
    CHECK(body == json{{"model", "py-embed"}, {"input", "likes green tea 2"}});
    CHECK(reqs[7]["headers"]["authorization"] == "Bearer sk-emb");
    CHECK(reqs[7]["path"] == "/v1/embeddings");
}
