// PostgreSQL failover under load: a primary with a synchronous standby, the engram-event-store binary
// on a multi-host DATABASE_URL (libpq's target_session_attrs=read-write), the primary killed like a
// dying machine, the standby promoted as an orchestrator would, the old primary rewound and brought
// back as the new primary's standby.
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/nats/nats.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <csignal>
#include <mutex>
#include <set>
#include <thread>

using namespace engram;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

testing::PostgresOptions replicated() {
    // pg_rewind needs full_page_writes and wal_log_hints; every commit waits for one standby's flush.
    return testing::PostgresOptions{false,
                                    {"full_page_writes=on", "wal_log_hints=on", "synchronous_standby_names=*",
                                     "synchronous_commit=on", "wal_keep_size=256MB"}};
}

std::vector<std::string> stream_ids(nats::Connection& nc) {
    std::vector<std::string> out;
    auto info = nc.stream_info("EVENTS");
    if (!info || info->messages == 0) return out;
    for (std::uint64_t seq = info->first_seq; seq <= info->last_seq; seq += 500) {
        auto msgs = nc.get_stream_messages("EVENTS", seq, 500);
        if (!msgs) return {};
        for (auto& m : *msgs) out.push_back(m.headers["Nats-Msg-Id"]);
    }
    return out;
}

std::vector<std::string> log_ids(const std::string& db) {
    pqxx::connection c(db);
    pqxx::nontransaction tx(c);
    std::vector<std::string> out;
    for (const auto& row : tx.exec("SELECT id::text FROM events ORDER BY position")) out.push_back(row[0].c_str());
    return out;
}

json event(const std::string& aggregate, int n) {
    return {{"id", Uuid::v4().str()}, {"type", "SomethingHappened"}, {"aggregate_id", aggregate}, {"data", {{"n", n}}}};
}

// Stops and joins the client threads however the test ends: a failed REQUIRE must not leave them running.
struct Joiner {
    std::atomic<bool>& stop;
    std::vector<std::thread>& threads;
    ~Joiner() {
        stop = true;
        for (auto& t : threads)
            if (t.joinable()) t.join();
    }
};

struct Store {
    Store(std::string db_, std::string nats_url_, std::map<std::string, std::string> extra_)
        : db(std::move(db_)), nats_url(std::move(nats_url_)), extra(std::move(extra_)) {}
    std::string db, nats_url;
    std::map<std::string, std::string> extra;
    int port = testing::free_port();
    std::string dir = testing::make_temp_dir("store-failover");
    std::unique_ptr<testing::Process> proc;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
    void start() {
        std::map<std::string, std::string> env{{"DATABASE_URL", db},
                                               {"NATS_URL", nats_url},
                                               {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(port)},
                                               {"LOG_LEVEL", "info"}};
        for (auto& [k, v] : extra) env[k] = v;
        proc = std::make_unique<testing::Process>(
            std::vector<std::string>{testing::build_dir() + "/event-store/engram-event-store"}, env, dir + "/store.log");
        REQUIRE(testing::eventually(
            [&] {
                http::Client c(url());
                auto r = c.get("/readyz");
                return r.ok() && r->status == 200;
            },
            std::chrono::seconds(30)));
    }
};

}  // namespace

TEST_CASE("failover: the primary dies under load and the standby is promoted; no acknowledged event is lost",
          "[integration][failover]") {
    testing::Postgres a(replicated());
    auto b = testing::Postgres::standby_of(a, replicated());
    REQUIRE(testing::eventually([&] { return a.has_sync_standby(); }, std::chrono::seconds(30)));
    {
        pqxx::connection c(a.url());
        pqxx::nontransaction tx(c);
        tx.exec("CREATE DATABASE engram");
    }
    testing::Nats nats;
    Store s{testing::Postgres::multi_host_url({&a, b.get()}, "engram"), nats.url(), {{"EVENT_STORE_COMMIT_TIMEOUT_MS", "1500"}}};
    s.start();

    std::mutex mu;
    std::set<std::string> acknowledged, attempted;
    std::map<int, int> statuses;  // HTTP status (0: no answer within the client's timeout) -> count
    std::atomic<bool> stop{false};
    std::atomic<long long> last_ack_ns{0};
    std::vector<std::thread> clients;
    Joiner joiner{stop, clients};
    for (int t = 0; t < 6; ++t)
        clients.emplace_back([&, t] {
            http::Client c(s.url(), http::ClientOptions{std::chrono::milliseconds(6000)});
            for (int i = 0; !stop; ++i) {
                auto id = Uuid::v4().str();
                json e = {{"id", id},
                          {"type", "SomethingHappened"},
                          {"aggregate_id", "agg:" + std::to_string(t % 3)},
                          {"data", {{"n", i}}}};
                {
                    std::lock_guard lk(mu);
                    attempted.insert(id);
                }
                // The same id until the store says it is stored: a retry after an unknown outcome
                // must not duplicate.
                for (;;) {
                    auto r = c.post_json("/events", e);
                    int status = r.ok() ? r->status : 0;
                    {
                        std::lock_guard lk(mu);
                        statuses[status]++;
                    }
                    if (status == 201 || status == 200) {
                        std::lock_guard lk(mu);
                        acknowledged.insert(id);
                        last_ack_ns = Clock::now().time_since_epoch().count();
                        break;
                    }
                    if (stop) break;
                    std::this_thread::sleep_for(std::chrono::milliseconds(50));
                }
            }
        });

    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    std::size_t before_kill;
    {
        std::lock_guard lk(mu);
        before_kill = acknowledged.size();
    }
    auto killed_at = Clock::now();
    a.kill();
    b->promote();
    // The promoted primary requires a synchronous standby too and has none yet: commits wait, and
    // the store must answer 503 instead of hanging. The orchestrator brings the old primary back.
    // Longer than the clients' 6 s timeout: a store that waits on the commit would leave them unanswered.
    std::this_thread::sleep_for(std::chrono::milliseconds(8000));
    INFO("store log: " << s.dir << "/store.log");
    a.rejoin_as_standby_of(*b);
    INFO(a.log());
    REQUIRE(testing::eventually([&] { return b->has_sync_standby(); }, std::chrono::seconds(30)));
    auto rejoined_at = Clock::now();
    // Served again: acknowledgements resume.
    REQUIRE(testing::eventually([&] { return Clock::time_point(Clock::duration(last_ack_ns.load())) > rejoined_at; },
                                std::chrono::seconds(30)));
    auto recovered_at = Clock::time_point(Clock::duration(last_ack_ns.load()));
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    stop = true;
    for (auto& c : clients) c.join();
    WARN("acknowledged before the kill: " << before_kill << ", in all: " << acknowledged.size() << "; unavailable "
                                          << std::chrono::duration<double>(recovered_at - killed_at).count()
                                          << " s from the kill, "
                                          << std::chrono::duration<double>(recovered_at - rejoined_at).count()
                                          << " s after a synchronous standby was back");
    for (auto& [st, n] : statuses) WARN("status " << st << ": " << n);
    CHECK(before_kill > 50);
    CHECK(statuses[503] > 0);  // the outage was answered, not hung
    CHECK(statuses[0] == 0);   // no request waited past the client's 6 s (the commit timeout is 1.5 s)

    pqxx::connection c(b->url("engram"));
    pqxx::nontransaction tx(c);
    std::map<std::string, int> stored;
    std::vector<std::string> ids_by_position;
    auto rows = tx.exec("SELECT id::text, position FROM events ORDER BY position");
    for (std::size_t i = 0; i < rows.size(); ++i) {
        stored[rows[i][0].c_str()]++;
        ids_by_position.push_back(rows[i][0].c_str());
        REQUIRE(rows[i][1].as<std::int64_t>() == static_cast<std::int64_t>(i + 1));  // gap-free
    }
    for (const auto& id : acknowledged) {
        INFO(id);
        CHECK(stored[id] == 1);
    }
    for (const auto& [id, n] : stored) {
        CHECK(n == 1);
        CHECK(attempted.count(id) == 1);
    }

    // The stream equals the new primary's log: nothing published that it lacks, nothing missing.
    auto nc = nats::Connection::connect(nats::ConnectOptions{nats.url()});
    REQUIRE(nc.ok());
    REQUIRE(testing::eventually([&] { return stream_ids(**nc) == ids_by_position; }, std::chrono::seconds(30)));
}

TEST_CASE("a relay frozen past its lease is fenced: the store that took over publishes, the stream equals the log",
          "[integration][failover]") {
    testing::Nats nats;
    auto db = testing::Postgres::shared().create_database();
    std::map<std::string, std::string> env{{"EVENT_STORE_RELAY_LEASE_TTL_MS", "1000"}};
    Store a(db, nats.url(), env), b(db, nats.url(), env);
    a.start();
    b.start();
    http::Client ca(a.url()), cb(b.url());
    auto active = [](http::Client& c) {
        auto r = c.get("/readyz");
        return r.ok() && r->status == 200 && r->json()["relay"]["active"].get<bool>();
    };
    for (int i = 0; i < 50; ++i) REQUIRE(ca.post_json("/events", event("agg:a", i))->status == 201);
    REQUIRE(testing::eventually([&] { return active(ca) != active(cb); }));
    Store& holder = active(ca) ? a : b;
    Store& other = active(ca) ? b : a;
    http::Client ch(holder.url()), co(other.url());

    ::kill(holder.proc->pid(), SIGSTOP);
    // The other store takes the lease over within the TTL and publishes what it appends.
    for (int i = 0; i < 50; ++i) REQUIRE(co.post_json("/events", event("agg:b", i))->status == 201);
    REQUIRE(testing::eventually([&] { return active(co); }, std::chrono::seconds(10)));
    ::kill(holder.proc->pid(), SIGCONT);
    // The woken relay finds its lease gone (or the stream ahead of its epoch) and stands by.
    for (int i = 0; i < 50; ++i) {
        REQUIRE(ch.post_json("/events", event("agg:c", i))->status == 201);
        REQUIRE(co.post_json("/events", event("agg:d", i))->status == 201);
    }
    auto nc = nats::Connection::connect(nats::ConnectOptions{nats.url()});
    REQUIRE(nc.ok());
    REQUIRE(testing::eventually([&] { return stream_ids(**nc) == log_ids(db); }, std::chrono::seconds(20)));
    CHECK(log_ids(db).size() == 200);
    CHECK(active(co));
    CHECK_FALSE(active(ch));
    // Each message carries its publisher's fence: the stream shows the hand-over as a higher epoch.
    auto info = (*nc)->stream_info("EVENTS");
    auto first = (*nc)->get_stream_message("EVENTS", info->first_seq);
    auto last = (*nc)->get_stream_message("EVENTS", info->last_seq);
    REQUIRE(first.ok());
    REQUIRE(last.ok());
    CHECK(first->headers["Engram-Relay-Fence"] < last->headers["Engram-Relay-Fence"]);
}

TEST_CASE("a store whose database is on an older timeline than the stream's publisher refuses appends",
          "[integration][failover]") {
    testing::Nats nats;
    auto db = testing::Postgres::shared().create_database();
    {
        Store s(db, nats.url(), {});
        s.start();
        http::Client c(s.url());
        REQUIRE(c.post_json("/events", event("agg:x", 0))->status == 201);
        auto nc = nats::Connection::connect(nats::ConnectOptions{nats.url()});
        REQUIRE(testing::eventually([&] { return stream_ids(**nc).size() == 1; }));
        // What a promoted standby's relay leaves in the stream: a message from timeline 99.
        auto ev = event("agg:x", 1);
        ev["position"] = 2;
        REQUIRE((*nc)
                    ->publish("events.SomethingHappened.0", ev.dump(),
                              {{"Nats-Msg-Id", ev["id"].get<std::string>()}, {"Engram-Relay-Fence", "99.1"}})
                    .ok());
        REQUIRE(testing::eventually([&] { return stream_ids(**nc).size() == 2; }));
        s.proc->terminate_and_wait();
    }
    Store s(db, nats.url(), {});
    s.proc = std::make_unique<testing::Process>(
        std::vector<std::string>{testing::build_dir() + "/event-store/engram-event-store"},
        std::map<std::string, std::string>{{"DATABASE_URL", db},
                                           {"NATS_URL", nats.url()},
                                           {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(s.port)},
                                           {"LOG_LEVEL", "info"}},
        s.dir + "/store.log");
    http::Client c(s.url());
    REQUIRE(testing::eventually([&] {
        auto r = c.get("/readyz");
        return r.ok() && r->status == 503 && r->json()["checks"].value("relay", "").find("timeline 99") != std::string::npos;
    }));
    auto r = c.post_json("/events", event("agg:x", 2));
    REQUIRE(r.ok());
    CHECK(r->status == 503);
    CHECK(r->json()["error"] == "unavailable");
    CHECK(r->json()["detail"].get<std::string>().find("old primary") != std::string::npos);
    CHECK(log_ids(db).size() == 1);  // nothing written
}

TEST_CASE("a three-node NATS cluster: kill -9 the stream's leader during appends; no append fails, the stream equals the log",
          "[integration][failover]") {
    testing::NatsCluster cluster;
    auto db = testing::Postgres::shared().create_database();
    Store s(db, cluster.url(), {{"NATS_STREAM_REPLICAS", "3"}});
    s.start();
    auto nc = nats::Connection::connect(nats::ConnectOptions{cluster.url()});
    REQUIRE(nc.ok());
    REQUIRE(testing::eventually(
        [&] {
            auto info = (*nc)->stream_info("EVENTS");
            return info.ok() && info->replicas == 3 && !info->leader.empty();
        },
        std::chrono::seconds(30)));

    std::mutex mu;
    std::map<int, int> statuses;
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    Joiner joiner{stop, clients};
    for (int t = 0; t < 4; ++t)
        clients.emplace_back([&, t] {
            http::Client c(s.url());
            for (int i = 0; !stop; ++i) {
                auto r = c.post_json("/events", event("agg:" + std::to_string(t), i));
                std::lock_guard lk(mu);
                statuses[r.ok() ? r->status : 0]++;
            }
        });
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    auto before = (*nc)->stream_info("EVENTS");
    REQUIRE(before.ok());
    auto killed_at = Clock::now();
    cluster.kill(before->leader);
    // Recovery: the first message stored after the kill, seen through the surviving servers.
    Clock::time_point resumed{};
    REQUIRE(testing::eventually(
        [&] {
            auto info = (*nc)->stream_info("EVENTS");
            if (!info.ok() || info->messages <= before->messages + 100) return false;
            resumed = Clock::now();
            return true;
        },
        std::chrono::seconds(60)));
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    stop = true;
    for (auto& t : clients) t.join();
    auto info = (*nc)->stream_info("EVENTS");
    WARN("stream leader " << before->leader << " killed at " << before->messages << " messages; publishing resumed (100 more "
                          << "stored) after " << std::chrono::duration<double>(resumed - killed_at).count() << " s; new leader "
                          << (info.ok() ? info->leader : "?"));
    for (auto& [st, n] : statuses) WARN("status " << st << ": " << n);
    CHECK(statuses.size() == 1);  // only 201: appends never depend on NATS
    CHECK(statuses[201] > 0);
    REQUIRE(testing::eventually([&] { return stream_ids(**nc) == log_ids(db); }, std::chrono::seconds(30)));
}
