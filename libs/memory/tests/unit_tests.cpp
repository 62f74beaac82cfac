#include <catch2/catch.hpp>

#include "engram/memory/memory.h"

using namespace engram::memory;

TEST_CASE("the local embedding is deterministic and normalised", "[unit][memory]") {
    auto a = local_embedding("My favourite colour is green");
    CHECK(a.size() == kLocalDims);
    CHECK(a == local_embedding("My favourite colour is green"));
    CHECK(cosine(a, a) == Approx(1.0));
    CHECK(local_embedding("") == std::vector<float>(kLocalDims, 0.0f));
}

TEST_CASE("the local embedding puts related texts closer than unrelated ones", "[unit][memory]") {
    auto q = local_embedding("what colour do I like?");
    auto related = local_embedding("favourite colour: green");
    auto unrelated = local_embedding("the meeting with Bob is on Tuesday");
    CHECK(cosine(q, related) > cosine(q, unrelated));
    auto stems = cosine(local_embedding("remembered birthdays"), local_embedding("remember the birthday"));
    CHECK(stems > cosine(local_embedding("remembered birthdays"), local_embedding("parking the car")));
}
