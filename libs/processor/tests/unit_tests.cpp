// The pure parts of the runtime: who owns which partition, and which failures are transient.
#include "engram/processor/processor.h"
#include "membership.h"

#include <catch2/catch.hpp>

#include <map>

using namespace engram;

namespace {

std::vector<std::string> members(int n, int offset = 0) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) out.push_back(Uuid::v5(Uuid::v5(Uuid(), "test"), std::to_string(i + offset)).str());
    return out;
}

}  // namespace

TEST_CASE("rendezvous assignment: every partition owned, spread evenly, moves only what must move", "[unit][processor]") {
    const int P = 64;
    auto three = members(3);
    auto a3 = processor::assign(three, P);
    std::map<std::string, int> share;
    for (const auto& o : a3) {
        REQUIRE_FALSE(o.empty());
        ++share[o];
    }
    CHECK(share.size() == 3);
    for (auto& [m, n] : share) {
        CHECK(n >= 21);  // 64 / 3: 21 or 22 each
        CHECK(n <= 22);
    }
    // Same input, same answer, whatever the order of the members.
    auto reversed = three;
    std::reverse(reversed.begin(), reversed.end());
    CHECK(processor::assign(reversed, P) == a3);

    // A fourth joins: only partitions it wins move, all to it.
    auto four = three;
    four.push_back(members(1, 3)[0]);
    auto a4 = processor::assign(four, P);
    int moved = 0, to_new = 0;
    for (int p = 0; p < P; ++p) {
        if (a4[p] != a3[p]) ++moved;
        if (a4[p] == four.back()) ++to_new;
    }
    CHECK(to_new == 16);
    CHECK(moved >= 16);
    CHECK(moved <= 24);  // about P/4, plus a few cascades of the load cap
    // One leaves: mostly its partitions move.
    std::vector<std::string> two = {three[0], three[2]};
    auto a2 = processor::assign(two, P);
    int kept = 0;
    for (int p = 0; p < P; ++p)
        if (a3[p] != three[1] && a2[p] == a3[p]) ++kept;
    CHECK(kept >= 36);  // of the 42-43 that stayed with the other two, most stay where they were
    CHECK(processor::assign({}, 4) == std::vector<std::string>(4));
}

TEST_CASE("failure classes: unavailable dependencies are transient, the rest deterministic", "[unit][processor]") {
    CHECK(processor::is_transient(Error::make("unavailable", "db down")));
    CHECK(processor::is_transient(Error::make("connect", "refused")));
    CHECK(processor::is_transient(Error::make("timeout", "slow")));
    CHECK(processor::is_transient(Error{"event_store", "503", {{"status", 503}}}));
    CHECK(processor::is_transient(Error{"event_store", "429", {{"status", 429}}}));
    CHECK_FALSE(processor::is_transient(Error{"event_store", "400", {{"status", 400}}}));
    CHECK_FALSE(processor::is_transient(Error{"event_store", "409", {{"status", 409}, {"error", "version_conflict"}}}));
    CHECK_FALSE(processor::is_transient(Error::make("exception", "bug")));
    CHECK_FALSE(processor::is_transient(Error::make("embeddings", "no data")));
    CHECK(processor::is_transient(Error{"embeddings", "502", {{"status", 502}}}));
    CHECK(processor::is_transient(processor::transient(Error::make("smtp", "421 try later"))));
    CHECK_FALSE(processor::is_transient(Error{"x", "y", {{"transient", false}}}));
}

TEST_CASE("partition_of is FNV-1a 32 of the aggregate id modulo the partition count", "[unit][processor]") {
    // Reference vectors of FNV-1a 32.
    CHECK(events::fnv1a32("") == 0x811c9dc5u);
    CHECK(events::fnv1a32("a") == 0xe40c292cu);
    CHECK(events::fnv1a32("foobar") == 0xbf9cf968u);
    CHECK(events::partition_of("foobar", 16) == static_cast<int>(0xbf9cf968u % 16));
    CHECK(events::partition_of("anything", 1) == 0);
    std::map<int, int> spread;
    for (int i = 0; i < 1600; ++i) ++spread[events::partition_of("session:telegram:" + std::to_string(i), 16)];
    CHECK(spread.size() == 16);
    for (auto& [p, n] : spread) CHECK(n > 50);
}
