#include <catch2/catch.hpp>

#include "engram/core/uuid.h"
#include "engram/memory/memory.h"
#include "engram/pg/pg.h"
#include "engram/testing/testing.h"

using namespace engram;

namespace {

events::Event stored_memory(std::int64_t pos, const std::string& user, const std::string& text) {
    events::Event e;
    e.id = Uuid::v4();
    e.type = "MemoryStored";
    e.aggregate_id = "user:" + user;
    e.position = GlobalPosition(pos);
    e.version = AggregateVersion(pos);
    e.data = {{"user_id", user}, {"text", text}};
    return e;
}

}  // namespace

TEST_CASE("memory search finds by words and by similarity, per user, and a rebuild gives the same results",
          "[integration][memory]") {
    auto url = testing::Postgres::shared().create_database();
    pqxx::connection c(url);
    memory::migrate(c);
    memory::migrate(c);  // idempotent
    auto embedder = memory::make_embedder("", "", "");
    CHECK(embedder->name() == "local");
    std::vector<events::Event> evs = {
        stored_memory(1, "alice", "Alice's favourite colour is green"),
        stored_memory(2, "alice", "Alice has a dog called Rex"),
        stored_memory(3, "alice", "The dentist appointment is on Friday at 10"),
        stored_memory(4, "bob", "Bob's favourite colour is red"),
    };
    auto index_all = [&] {
        pqxx::work tx(c);
        for (auto& e : evs) memory::index(tx, e, *embedder->embed(e.data["text"].get<std::string>()));
        tx.commit();
    };
    index_all();
    index_all();  // a redelivery adds nothing
    {
        pqxx::nontransaction tx(c);
        CHECK(tx.exec("SELECT count(*) FROM memory_index")[0][0].as<int>() == 4);
    }
    pg::Pool pool(url, 2);
    auto words = memory::search(pool, *embedder, "alice", "dog", 5);
    REQUIRE(words.ok());
    REQUIRE_FALSE(words->empty());
    CHECK((*words)[0].text == "Alice has a dog called Rex");
    CHECK((*words)[0].text_rank > 0);

    auto meaning = memory::search(pool, *embedder, "alice", "which colours does she like?", 5);
    REQUIRE(meaning.ok());
    REQUIRE_FALSE(meaning->empty());
    CHECK((*meaning)[0].text == "Alice's favourite colour is green");
    for (auto& h : *meaning) CHECK(h.text.find("Bob") == std::string::npos);

    auto before = *memory::search(pool, *embedder, "alice", "appointment friday", 5);
    {
        pqxx::work tx(c);
        memory::clear(tx);
        tx.commit();
    }
    CHECK(memory::search(pool, *embedder, "alice", "appointment friday", 5)->empty());
    index_all();
    auto after = *memory::search(pool, *embedder, "alice", "appointment friday", 5);
    REQUIRE(before.size() == after.size());
    for (std::size_t i = 0; i < before.size(); ++i) {
        CHECK(before[i].memory_id == after[i].memory_id);
        CHECK(before[i].score == Approx(after[i].score));
    }
}
