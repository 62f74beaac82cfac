// A NATS_URL listing several servers: parsed into a server list (NATS.c's URL option alone does
// not connect with one), and a real three-node JetStream cluster on loopback reached through it.
#include <catch2/catch.hpp>

#include <thread>

#include "engram/core/uuid.h"
#include "engram/nats/nats.h"
#include "engram/testing/testing.h"

using namespace engram;
using namespace std::chrono_literals;

namespace {

// A replicated stream on the cluster, once the meta leader and then the stream's own group have
// elected their leaders (both slower on a loaded machine).
void make_replicated_stream(nats::Connection& c, const std::string& name, const std::string& subjects) {
    nats::StreamConfig sc;
    sc.name = name;
    sc.subjects = {subjects};
    sc.replicas = 3;
    REQUIRE(testing::eventually([&] { return c.ensure_stream(sc).ok(); }, 30s));
    REQUIRE(testing::eventually(
        [&] {
            auto i = c.stream_info(name);
            return i && !i->leader.empty();
        },
        60s));
}

// Publishes "m<from>".."m<to - 1>" on `subject`. A publish during a leader election may time out or
// fail: retried with the same id, which the stream stores once.
void publish_all(nats::Connection& c, const testing::NatsCluster& cluster, const std::string& subject, int from, int to) {
    for (int i = from; i < to; ++i) {
        auto id = Uuid::v4().str();
        bool stored = testing::eventually(
            [&] {
                auto ack = c.publish_sync(subject, "m" + std::to_string(i), id);
                return ack && ack->ok;
            },
            60s);
        if (!stored) FAIL("message " << i << " not stored within 60 s; the servers' logs:\n" << cluster.logs());
    }
}

}  // namespace

TEST_CASE("server_urls splits a NATS_URL list and shares its credentials", "[unit][nats]") {
    CHECK(nats::server_urls("nats://a:4222") == std::vector<std::string>{"nats://a:4222"});
    CHECK(nats::server_urls("nats://a:1, nats://b:2 ,,nats://c:3") ==
          std::vector<std::string>{"nats://a:1", "nats://b:2", "nats://c:3"});
    CHECK(nats::server_urls("nats://tok@a:1,nats://b:2") == std::vector<std::string>{"nats://tok@a:1", "nats://tok@b:2"});
    CHECK(nats::server_urls("nats://u:p@a:1,nats://v:q@b:2") == std::vector<std::string>{"nats://u:p@a:1", "nats://v:q@b:2"});
    CHECK(nats::server_urls(" , ").empty());
}

TEST_CASE("a comma-separated NATS_URL reaches a three-node JetStream cluster, the first entry dead", "[integration][nats]") {
    testing::NatsCluster cluster;
    std::string url = "nats://127.0.0.1:" + std::to_string(testing::free_port());  // nobody listens there
    url += "," + cluster.url();
    nats::ConnectOptions o;
    o.url = url;
    o.name = "cluster-test";
    auto c = nats::Connection::connect(o);
    REQUIRE(c);
    REQUIRE(testing::eventually([&] { return (*c)->connected(); }, 15s));
    // The cluster elects its JetStream meta leader after the routes are up: the stream appears then.
    make_replicated_stream(**c, "CLUSTERED", "clustered.>");
    auto publish = [&](int from, int to) { publish_all(**c, cluster, "clustered.x", from, to); };
    publish(0, 20);
    auto info = (*c)->stream_info("CLUSTERED");
    REQUIRE(info);
    CHECK(info->messages == 20);
    CHECK(info->replicas == 3);
    REQUIRE_FALSE(info->leader.empty());
    // kill -9 the stream's leader: the other two elect a new one and keep every message.
    auto t0 = std::chrono::steady_clock::now();
    cluster.kill(info->leader);
    publish(20, 40);
    WARN("first 20 publishes after killing the stream leader took "
         << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count() << " ms");
    REQUIRE(testing::eventually(
        [&] {
            auto i2 = (*c)->stream_info("CLUSTERED");
            return i2 && i2->messages == 40 && !i2->leader.empty() && i2->leader != info->leader;
        },
        30s));
}

TEST_CASE("a cursor placed on a server that dies says so when checked, and one reopened at its next sequence goes on",
          "[integration][nats]") {
    testing::NatsCluster cluster;
    nats::ConnectOptions o;
    o.url = cluster.url();
    o.name = "cursor-host-test";
    auto c = nats::Connection::connect(o);
    REQUIRE(c);
    make_replicated_stream(**c, "HOSTED", "hosted.>");
    auto publish = [&](int from, int to) { publish_all(**c, cluster, "hosted.x", from, to); };
    publish(0, 5);
    nats::CursorOptions co;
    co.stream = "HOSTED";
    co.filter = "hosted.x";
    auto cur = nats::Cursor::open(**c, co);
    REQUIRE(cur);
    std::vector<std::string> got;
    auto drain = [&](nats::Cursor& k, std::size_t want) {
        return testing::eventually(
            [&] {
                auto r = k.fetch(10, 200ms);
                if (r)
                    for (auto& m : *r) got.push_back(m.data);
                return got.size() >= want;
            },
            30s);
    };
    REQUIRE(drain(**cur, 5));
    auto host = (*cur)->server();
    REQUIRE(host);
    REQUIRE_FALSE(host->empty());
    // One replica, on `host`: killed with its server, the consumer is not moved anywhere.
    cluster.kill(*host);
    publish(5, 10);
    auto fetched = (*cur)->fetch(10, 500ms);
    CHECK((!fetched || fetched->empty()));
    auto st = (*cur)->check();
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == "cursor_unreachable");
    co.start_seq = (*cur)->next_seq();
    CHECK(co.start_seq == 6);
    cur->reset();
    // The runtime retries the same way: while the cluster re-elects (the dead server may have led
    // the meta group), creating a consumer can fail for a few seconds.
    Result<std::unique_ptr<nats::Cursor>> again = Error::make("not_yet", "not opened");
    REQUIRE(testing::eventually(
        [&] {
            again = nats::Cursor::open(**c, co);
            return again.ok();
        },
        30s));
    REQUIRE(drain(**again, 10));
    CHECK(got == std::vector<std::string>{"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"});
    CHECK((*again)->check().ok());
}
