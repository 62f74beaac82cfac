#include <catch2/catch.hpp>

#include "engram/http/server.h"
#include "engram/memory/memory.h"

#include <memory>
#include <mutex>
#include <string>

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

// The embeddings endpoint as a small local server answering whatever the test sets.
TEST_CASE("a hostile embeddings answer is an error, never an exception or a cast out of range", "[unit][memory]") {
    std::mutex mu;
    std::string answer;
    engram::http::Server server({}, [&](engram::http::Request&, std::shared_ptr<engram::http::Responder> res) {
        std::lock_guard lk(mu);
        res->respond(engram::http::Response::text(200, answer, "application/json"));
    });
    server.start();
    auto embedder = make_embedder("http://127.0.0.1:" + std::to_string(server.port()) + "/v1", "", "m");
    auto embed_with = [&](std::string body) {
        {
            std::lock_guard lk(mu);
            answer = std::move(body);
        }
        return embedder->embed("text");
    };
    auto good = embed_with(R"({"data":[{"embedding":[0.5,-0.25,1]}]})");
    REQUIRE(good.ok());
    CHECK(*good == std::vector<float>{0.5f, -0.25f, 1.0f});
    for (const std::string& bad :
         {std::string(R"({"data":[{"embedding":[1,"x",3]}]})"), std::string(R"({"data":[{"embedding":[1e300]}]})"),
          std::string(R"({"data":[{"embedding":[null]}]})"), std::string(R"({"data":[{"embedding":[1e400]}]})"),
          std::string(R"({"data":[{"embedding":)") + std::string(100000, '[') + std::string(100000, ']') + "}]}",
          std::string(R"([1,2])")}) {
        INFO(bad.substr(0, 80));
        auto r = embed_with(bad);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "embeddings");
    }
}
