// engram::processor against real servers: a throwaway PostgreSQL database, a nats-server -js and
// the real engram-event-store binary (its relay publishes what the tests append).
#include "engram/http/client.h"
#include "engram/core/json.h"
#include "engram/log/log.h"
#include "engram/nats/nats.h"
#include "engram/processor/processor.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using namespace engram;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

struct Env {
    testing::Nats nats;  // its own: the store's relay owns the EVENTS stream of its server
    std::string db = testing::Postgres::shared().create_database();
    int port = testing::free_port();
    std::string dir = testing::make_temp_dir("processor-test");
    std::unique_ptr<testing::Process> store;
    std::unique_ptr<http::Client> client;

    Env() {
        log::init("warn", "text");
        start_store();
    }

    void start_store() {
        store = std::make_unique<testing::Process>(
            std::vector<std::string>{testing::build_dir() + "/event-store/engram-event-store"},
            std::map<std::string, std::string>{{"DATABASE_URL", db},
                                               {"NATS_URL", nats.url()},
                                               {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(port)},
                                               {"LOG_LEVEL", "warn"}},
            dir + "/store.log");
        client = std::make_unique<http::Client>(store_url());
        bool ready = testing::eventually(
            [&] {
                auto r = client->get("/readyz");
                return r.ok() && r->status == 200;
            },
            20s);
        INFO(store->log());
        REQUIRE(ready);
    }

    void stop_store() { store.reset(); }

    std::string store_url() const { return "http://127.0.0.1:" + std::to_string(port); }

    // Appends one event; returns its id.
    std::string append(const std::string& type, const std::string& agg, json data, json metadata = json::object()) {
        auto id = Uuid::v4().str();
        auto r = client->post_json("/events",
                                   {{"id", id}, {"type", type}, {"aggregate_id", agg}, {"data", data}, {"metadata", metadata}});
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
        return id;
    }

    std::vector<json> all_events() {
        auto r = client->get("/events?limit=1000");
        REQUIRE(r.ok());
        REQUIRE(r->status == 200);
        auto out = r->json()["events"].get<std::vector<json>>();
        return out;
    }

    processor::Options options(const std::string& name, std::vector<std::string> types) {
        processor::Options o;
        o.name = name;
        o.nats_url = nats.url();
        o.database_url = db;
        o.event_store_url = store_url();
        o.types = std::move(types);
        o.concurrency = 4;
        o.max_attempts = 3;
        o.retry_backoff = 20ms;
        o.lease_ttl = 1500ms;
        o.tick = 250ms;
        o.parked_poll = 200ms;
        o.drain_timeout = 5s;
        return o;
    }

    pqxx::result sql(const std::string& q) {
        pqxx::connection c(db);
        pqxx::work tx(c);
        auto r = tx.exec(q);
        tx.commit();
        return r;
    }
};

// Handling order per aggregate, as seen by handlers.
struct Recorder {
    std::mutex mu;
    std::map<std::string, std::vector<int>> by_agg;
    std::vector<std::string> ids;
    int total = 0;

    void record(const events::Event& e) {
        std::lock_guard lk(mu);
        by_agg[e.aggregate_id].push_back(e.data.value("n", -1));
        ids.push_back(e.id.str());
        ++total;
    }
    int count() {
        std::lock_guard lk(mu);
        return total;
    }
    std::vector<int> of(const std::string& agg) {
        std::lock_guard lk(mu);
        return by_agg[agg];
    }
};

std::vector<int> iota_vec(int from, int to) {  // [from, to)
    std::vector<int> v;
    for (int i = from; i < to; ++i) v.push_back(i);
    return v;
}

std::string get_metrics(const processor::Runtime& rt) {
    http::Client c("http://127.0.0.1:" + std::to_string(rt.port()));
    auto r = c.get("/metrics");
    REQUIRE(r.ok());
    REQUIRE(r->status == 200);
    return r->body;
}

}  // namespace

TEST_CASE("every event is handled once, in order per aggregate, other types skipped", "[integration][processor]") {
    Env env;
    Recorder rec;
    std::atomic<int> concurrent{0}, max_concurrent{0};
    processor::Runtime rt(env.options("order-proc", {"TestStep", "TestOther"}), [&](processor::Context& ctx) -> Status {
        int now = ++concurrent;
        int prev = max_concurrent.load();
        while (now > prev && !max_concurrent.compare_exchange_weak(prev, now)) {}
        rec.record(ctx.event());
        std::this_thread::sleep_for(std::chrono::milliseconds(ctx.event().data.value("n", 0) % 3));
        --concurrent;
        return ok();
    });
    REQUIRE(rt.start().ok());

    const int per = 25;
    const std::vector<std::string> aggs = {"agg-a", "agg-b", "agg-c", "agg-d"};
    for (int n = 0; n < per; ++n)
        for (std::size_t a = 0; a < aggs.size(); ++a) {
            env.append(a % 2 ? "TestStep" : "TestOther", aggs[a], {{"n", n}});
            if (n % 5 == 0) env.append("TestIgnored", aggs[a], {{"n", -1}});
        }
    const int expected = per * static_cast<int>(aggs.size());
    REQUIRE(testing::eventually([&] { return rec.count() >= expected; }, 20s));
    std::this_thread::sleep_for(500ms);  // nothing more arrives: no duplicates
    CHECK(rec.count() == expected);
    for (const auto& a : aggs) CHECK(rec.of(a) == iota_vec(0, per));
    CHECK(max_concurrent.load() > 1);  // aggregates really ran concurrently
    {
        std::lock_guard lk(rec.mu);
        CHECK(std::set<std::string>(rec.ids.begin(), rec.ids.end()).size() == rec.ids.size());
    }
    REQUIRE(testing::eventually(
        [&] {
            auto m = get_metrics(rt);
            return m.find("processor_events_handled_total{processor=\"order-proc\"} " + std::to_string(expected)) !=
                       std::string::npos &&
                   m.find("processor_events_skipped_total{processor=\"order-proc\"} 20") != std::string::npos &&
                   m.find("processor_consumer_lag{processor=\"order-proc\"} 0") != std::string::npos;
        },
        5s));
    auto m = get_metrics(rt);
    INFO(m);
    CHECK(m.find("processor_handler_seconds_count{processor=\"order-proc\"} " + std::to_string(expected)) != std::string::npos);
    CHECK(m.find("processor_in_flight{processor=\"order-proc\"} 0") != std::string::npos);
    CHECK(m.find("processor_handler_failures_total{processor=\"order-proc\"} 0") != std::string::npos);
    CHECK(m.find("processor_parked_events{processor=\"order-proc\"} 0") != std::string::npos);

    http::Client hc("http://127.0.0.1:" + std::to_string(rt.port()));
    auto h = hc.get("/healthz");
    REQUIRE(h.ok());
    CHECK(h->status == 200);
    auto r = hc.get("/readyz");
    REQUIRE(r.ok());
    CHECK(r->status == 200);
    CHECK(r->json()["nats"] == "ok");
    CHECK(r->json()["database"] == "ok");
    rt.stop();
}

TEST_CASE("hostile messages on the stream are skipped as poison and never block the others", "[integration][processor][json]") {
    Env env;
    Recorder rec;
    processor::Runtime rt(env.options("poison-proc", {"TestStep"}), [&](processor::Context& ctx) -> Status {
        rec.record(ctx.event());
        return ok();
    });
    REQUIRE(rt.start().ok());
    // Whoever can publish on the bus: a 200 KB nesting bomb, a number no double holds, and an
    // envelope whose data nests one level more than any store body may.
    nats::ConnectOptions o;
    o.url = env.nats.url();
    auto nc = nats::Connection::connect(o);
    REQUIRE(nc.ok());
    std::string deep_data;
    for (int i = 0; i < kMaxJsonDepth; ++i) deep_data += "{\"a\":";
    deep_data += "{}" + std::string(kMaxJsonDepth, '}');
    const std::string envelope_start = R"({"id":"6f9619ff-8b86-d011-b42d-00cf4fc964ff","type":"TestStep","aggregate_id":"p",)"
                                       R"("aggregate_version":1,"position":1,"timestamp":"2026-11-22T10:00:00.000Z",)"
                                       R"("metadata":{},"data":)";
    for (const std::string& body : {std::string(100000, '[') + std::string(100000, ']'), envelope_start + R"({"n":1e400}})",
                                    envelope_start + deep_data + "}"}) {
        auto ack = (*nc)->publish_sync("events.TestStep." + std::to_string(events::partition_of("agg-good", 16)), body,
                                       Uuid::v4().str());
        REQUIRE(ack.ok());
        REQUIRE(ack->ok);
    }
    // The good event after them is handled.
    env.append("TestStep", "agg-good", {{"n", 7}});
    REQUIRE(testing::eventually([&] { return rec.count() == 1; }, 20s));
    CHECK(rec.of("agg-good") == std::vector<int>{7});
    REQUIRE(testing::eventually(
        [&] {
            auto m = get_metrics(rt);
            return m.find("processor_events_undecodable_total{processor=\"poison-proc\"} 3") != std::string::npos &&
                   m.find("processor_consumer_lag{processor=\"poison-proc\"} 0") != std::string::npos;
        },
        10s));
    // Terminated: never redelivered, so nothing else arrives.
    std::this_thread::sleep_for(500ms);
    CHECK(rec.count() == 1);
    rt.stop();
}

TEST_CASE("a slow aggregate does not delay the others", "[integration][processor]") {
    Env env;
    Recorder rec;
    std::atomic<int> slow_done{0};
    std::atomic<int> slow_done_when_fast_finished{-1};
    const int fast_n = 20;
    processor::Runtime rt(env.options("slow-proc", {"TestStep"}), [&](processor::Context& ctx) -> Status {
        if (ctx.event().aggregate_id == "slow") {
            std::this_thread::sleep_for(1500ms);
            rec.record(ctx.event());
            ++slow_done;
            return ok();
        }
        rec.record(ctx.event());
        if (rec.of("fast").size() == static_cast<std::size_t>(fast_n)) slow_done_when_fast_finished = slow_done.load();
        return ok();
    });
    REQUIRE(rt.start().ok());
    for (int n = 0; n < 2; ++n) env.append("TestStep", "slow", {{"n", n}});
    for (int n = 0; n < fast_n; ++n) env.append("TestStep", "fast", {{"n", n}});
    REQUIRE(testing::eventually([&] { return rec.of("fast").size() == static_cast<std::size_t>(fast_n); }, 10s));
    // Every event of "fast" was handled while the first "slow" event was still running.
    CHECK(slow_done_when_fast_finished.load() == 0);
    CHECK(rec.of("fast") == iota_vec(0, fast_n));
    REQUIRE(testing::eventually([&] { return slow_done.load() == 2; }, 10s));
    CHECK(rec.of("slow") == iota_vec(0, 2));
}

TEST_CASE("a failing event is parked, the rest goes on, and a requested retry handles it", "[integration][processor]") {
    Env env;
    Recorder rec;
    std::atomic<bool> allow{false};
    std::mutex mu;
    std::vector<int> attempts_seen;
    std::vector<bool> parked_flags;
    processor::Runtime rt(env.options("park-proc", {"TestStep"}), [&](processor::Context& ctx) -> Status {
        if (ctx.event().data.value("fail", false)) {
            {
                std::lock_guard lk(mu);
                attempts_seen.push_back(ctx.attempt());
                parked_flags.push_back(ctx.retrying_parked());
            }
            if (!allow) return Error::make("boom", "deliberate failure " + std::to_string(ctx.attempt()));
        }
        rec.record(ctx.event());
        return ok();
    });
    REQUIRE(rt.start().ok());

    auto bad = env.append("TestStep", "A", {{"n", 0}, {"fail", true}});
    env.append("TestStep", "A", {{"n", 1}});
    env.append("TestStep", "A", {{"n", 2}});
    for (int n = 0; n < 3; ++n) env.append("TestStep", "B", {{"n", n}});

    // Later events of A and all of B are handled; the bad one is parked after 3 attempts.
    REQUIRE(testing::eventually([&] { return rec.of("A").size() == 2 && rec.of("B").size() == 3; }, 10s));
    CHECK(rec.of("A") == std::vector<int>{1, 2});
    CHECK(rec.of("B") == iota_vec(0, 3));
    {
        std::lock_guard lk(mu);
        CHECK(attempts_seen == std::vector<int>{1, 2, 3});
    }
    auto row = env.sql(
        "SELECT event_id::text, aggregate_id, type, attempts, error, retry_requested, position, "
        "envelope->>'id' FROM processor_parked WHERE processor = 'park-proc'");
    REQUIRE(row.size() == 1);
    CHECK(row[0][0].as<std::string>() == bad);
    CHECK(row[0][1].as<std::string>() == "A");
    CHECK(row[0][2].as<std::string>() == "TestStep");
    CHECK(row[0][3].as<int>() == 3);
    CHECK(row[0][4].as<std::string>().find("deliberate failure 3") != std::string::npos);
    CHECK_FALSE(row[0][5].as<bool>());
    CHECK(row[0][6].as<std::int64_t>() == 1);
    CHECK(row[0][7].as<std::string>() == bad);
    REQUIRE(testing::eventually(
        [&] {
            auto m = get_metrics(rt);
            return m.find("processor_events_parked_total{processor=\"park-proc\"} 1") != std::string::npos &&
                   m.find("processor_parked_events{processor=\"park-proc\"} 1") != std::string::npos &&
                   m.find("processor_handler_failures_total{processor=\"park-proc\"} 3") != std::string::npos;
        },
        5s));

    // A retry that fails again: attempts grow, retry_requested is cleared, the row stays.
    env.sql("UPDATE processor_parked SET retry_requested = true WHERE processor = 'park-proc'");
    REQUIRE(testing::eventually(
        [&] {
            auto r = env.sql("SELECT attempts, retry_requested FROM processor_parked WHERE processor = 'park-proc'");
            return r.size() == 1 && r[0][0].as<int>() == 4 && !r[0][1].as<bool>();
        },
        5s));
    {
        std::lock_guard lk(mu);
        CHECK(attempts_seen == std::vector<int>{1, 2, 3, 4});
        CHECK(parked_flags.back());
    }
    CHECK(rec.of("A").size() == 2);

    // Now it succeeds: the row disappears.
    allow = true;
    env.sql("UPDATE processor_parked SET retry_requested = true WHERE processor = 'park-proc'");
    REQUIRE(
        testing::eventually([&] { return env.sql("SELECT 1 FROM processor_parked WHERE processor = 'park-proc'").empty(); }, 5s));
    CHECK(rec.of("A") == std::vector<int>{1, 2, 0});
    {
        std::lock_guard lk(mu);
        CHECK(attempts_seen == std::vector<int>{1, 2, 3, 4, 5});
    }
    // Not handled again afterwards (the message was acked when parked).
    std::this_thread::sleep_for(500ms);
    CHECK(rec.of("A").size() == 3);
    REQUIRE(testing::eventually(
        [&] { return get_metrics(rt).find("processor_parked_events{processor=\"park-proc\"} 0") != std::string::npos; }, 5s));
}

TEST_CASE("Context::append is idempotent per (cause, step) and sets causation and correlation", "[integration][processor]") {
    Env env;
    std::mutex mu;
    std::vector<std::pair<std::int64_t, std::int64_t>> positions;
    std::atomic<int> handled{0};
    processor::Runtime rt(env.options("append-proc", {"TestCause"}), [&](processor::Context& ctx) -> Status {
        events::NewEvent e;
        e.type = "TestDerived";
        e.aggregate_id = ctx.event().aggregate_id;
        e.data = {{"from", ctx.event().id.str()}};
        auto p1 = ctx.append("reply", e);
        if (!p1) return p1.error();
        auto p2 = ctx.append("reply", e);  // what a redelivery would do
        if (!p2) return p2.error();
        {
            std::lock_guard lk(mu);
            positions.emplace_back(p1->value(), p2->value());
        }
        ++handled;
        return ok();
    });
    REQUIRE(rt.start().ok());
    auto with_corr =
        env.append("TestCause", "s1", json::object(), {{"correlation_id", "corr-1"}, {"user_id", "u1"}, {"session_id", "s1"}});
    auto without = env.append("TestCause", "s2", json::object());
    REQUIRE(testing::eventually([&] { return handled.load() == 2; }, 10s));
    {
        std::lock_guard lk(mu);
        for (auto& [a, b] : positions) CHECK(a == b);
    }
    std::map<std::string, json> derived;  // causation id -> event
    for (auto& e : env.all_events())
        if (e["type"] == "TestDerived") {
            auto cause = e["metadata"]["causation_id"].get<std::string>();
            CHECK(derived.count(cause) == 0);
            derived[cause] = e;
        }
    REQUIRE(derived.size() == 2);
    auto& d1 = derived.at(with_corr);
    CHECK(d1["id"] == Uuid::v5(*Uuid::parse(with_corr), "reply").str());
    CHECK(d1["metadata"]["correlation_id"] == "corr-1");
    CHECK(d1["metadata"]["user_id"] == "u1");
    CHECK(d1["metadata"]["session_id"] == "s1");
    CHECK(d1["metadata"]["source"] == "append-proc");
    auto& d2 = derived.at(without);
    CHECK(d2["id"] == Uuid::v5(*Uuid::parse(without), "reply").str());
    CHECK(d2["metadata"]["correlation_id"] == without);
    CHECK_FALSE(d2["metadata"].contains("user_id"));

    // The store itself answers 200 (replay) to the same derived event again.
    auto again = env.client->post_json(
        "/events",
        {{"id", d1["id"]}, {"type", "TestDerived"}, {"aggregate_id", "s1"}, {"data", d1["data"]}, {"metadata", d1["metadata"]}});
    REQUIRE(again.ok());
    CHECK(again->status == 200);
}

TEST_CASE("stop() drains running handlers and a new runtime continues without reprocessing acked events",
          "[integration][processor]") {
    Env env;
    Recorder first, second;
    const int n_events = 10;
    for (int n = 0; n < n_events; ++n) env.append("TestStep", "X", {{"n", n}});

    auto opts = env.options("restart-proc", {"TestStep"});
    {
        std::atomic<int> started{0};
        processor::Runtime rt(opts, [&](processor::Context& ctx) -> Status {
            ++started;
            std::this_thread::sleep_for(300ms);
            first.record(ctx.event());
            return ok();
        });
        REQUIRE(rt.start().ok());
        REQUIRE(testing::eventually([&] { return started.load() == 3; }, 10s));
        rt.stop();  // the third handler is running: it finishes and is acked; the rest is not
        CHECK(first.count() == 3);
        CHECK(first.of("X") == iota_vec(0, 3));
    }
    processor::Runtime rt2(opts, [&](processor::Context& ctx) -> Status {
        second.record(ctx.event());
        return ok();
    });
    REQUIRE(rt2.start().ok());
    for (int n = n_events; n < n_events + 5; ++n) env.append("TestStep", "X", {{"n", n}});
    REQUIRE(testing::eventually([&] { return second.count() >= n_events + 5 - 3; }, 15s));
    std::this_thread::sleep_for(500ms);
    CHECK(second.of("X") == iota_vec(3, n_events + 5));
}

TEST_CASE("processor configuration: shared settings, one-line errors", "[integration][processor]") {
    processor::Options d;
    d.name = "memory-processor";
    auto spec = processor::config_spec(d);
    auto env_of = [](std::map<std::string, std::string> m) {
        return [m](const std::string& k) -> std::optional<std::string> {
            auto it = m.find(k);
            if (it == m.end()) return std::nullopt;
            return it->second;
        };
    };
    auto v = spec.load(env_of(
        {{"MEMORY_PROCESSOR_LISTEN", "127.0.0.1:9100"}, {"ENGRAM_API_TOKEN", "t"}, {"ENGRAM_ALLOWED_HOSTS", "metrics.lan"}}));
    REQUIRE(v.ok());
    auto o = processor::options_from(*v, d);
    CHECK(o.listen == "127.0.0.1:9100");
    CHECK(o.allowed_hosts == std::vector<std::string>{"metrics.lan"});
    CHECK(o.api_token == "t");
    CHECK(o.concurrency == 8);
    CHECK(o.nats_url == "nats://127.0.0.1:54222");

    auto bad = spec.load(env_of({{"MEMORY_PROCESSOR_CONCURRENCY", "0"}, {"NATS_URL", "http://x"}}));
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().detail.find("MEMORY_PROCESSOR_CONCURRENCY") != std::string::npos);
    CHECK(bad.error().detail.find("NATS_URL") != std::string::npos);
    CHECK(bad.error().detail.find('\n') == std::string::npos);
}

TEST_CASE("the health server: loopback or allowed Host names without a token, the token when set", "[integration][processor]") {
    Env env;
    auto o = env.options("guard-proc", {"NoteTaken"});
    o.allowed_hosts = {"metrics.lan"};
    processor::Runtime rt(o, [](processor::Context&) { return ok(); });
    REQUIRE(rt.start().ok());
    for (const char* path : {"/healthz", "/readyz", "/metrics"}) {
        INFO(path);
        // A web page reading it through a rebound name, from another HTTP stack.
        auto r = testing::python_request(rt.port(), "GET", path, {{"Host", "rebind.attacker.example"}});
        INFO(r.dump());
        CHECK(r["status"] == 421);
        CHECK(json::parse(r["body"].get<std::string>())["error"] == "host_not_allowed");
        CHECK(testing::python_request(rt.port(), "GET", path, {{"Host", "metrics.lan:9100"}})["status"] == 200);
        CHECK(testing::python_request(rt.port(), "GET", path, {{"Host", "localhost"}})["status"] == 200);
    }
    rt.stop();

    auto t = env.options("guard-proc-token", {"NoteTaken"});
    t.api_token = "t0k";
    processor::Runtime rt2(t, [](processor::Context&) { return ok(); });
    REQUIRE(rt2.start().ok());
    CHECK(testing::python_request(rt2.port(), "GET", "/healthz", {{"Host", "engram-ai:8084"}})["status"] == 200);
    auto denied = testing::python_request(rt2.port(), "GET", "/metrics", {{"Host", "engram-ai:8084"}});
    CHECK(denied["status"] == 401);
    CHECK(json::parse(denied["body"].get<std::string>())["error"] == "unauthorized");
    CHECK(testing::python_request(rt2.port(), "GET", "/metrics", {{"Authorization", "Bearer t0k"}})["status"] == 200);
    rt2.stop();
}

namespace {

// Two aggregate ids in one partition (of 16), so that a backlog on the first shares the second's
// cursor.
std::pair<std::string, std::string> same_partition_pair() {
    std::string hot = "session:api:hot";
    int p = events::partition_of(hot, 16);
    for (int i = 0;; ++i) {
        auto cold = "session:api:cold-" + std::to_string(i);
        if (events::partition_of(cold, 16) == p) return {hot, cold};
    }
}

}  // namespace

TEST_CASE("fairness: a 600-event backlog on one aggregate does not delay another aggregate of its partition",
          "[integration][processor]") {
    Env env;
    auto [hot, cold] = same_partition_pair();
    const int backlog = 600;
    // The backlog is in the stream before the processor starts: its partition's cursor meets 600
    // events of `hot` first.
    nlohmann::json batch = {{"aggregate_id", hot}, {"events", nlohmann::json::array()}};
    for (int n = 0; n < backlog; ++n) batch["events"].push_back({{"type", "TestStep"}, {"data", {{"n", n}}}});
    auto r = env.client->post_json("/events", batch);
    REQUIRE(r.ok());
    REQUIRE(r->status == 201);

    std::atomic<int> hot_done{0};
    std::atomic<std::int64_t> cold_handled_ms{0};
    auto t0 = std::chrono::steady_clock::now();
    Recorder rec;
    processor::Runtime rt(env.options("fair-proc", {"TestStep"}), [&](processor::Context& ctx) -> Status {
        rec.record(ctx.event());
        if (ctx.event().aggregate_id == hot) {
            std::this_thread::sleep_for(20ms);  // 600 x 20 ms = 12 s of backlog on one worker
            ++hot_done;
        } else {
            cold_handled_ms =
                std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
        }
        return ok();
    });
    REQUIRE(rt.start().ok());
    REQUIRE(testing::eventually([&] { return hot_done.load() > 20; }, 15s));
    t0 = std::chrono::steady_clock::now();
    env.append("TestStep", cold, {{"n", 0}});
    REQUIRE(testing::eventually([&] { return cold_handled_ms.load() > 0; }, 10s));
    WARN("the other aggregate's event was handled " << cold_handled_ms.load() << " ms after its append, with "
                                                    << backlog - hot_done.load() << " events of the backlog still to go");
    CHECK(cold_handled_ms.load() < 2000);
    CHECK(hot_done.load() < backlog);  // it did not wait for the backlog
    // The backlog itself is handled whole and in order (most of it re-read from the stream: only
    // 16 bodies per aggregate are held).
    REQUIRE(testing::eventually([&] { return hot_done.load() == backlog; }, 60s));
    CHECK(rec.of(hot) == iota_vec(0, backlog));
    rt.stop();
}

TEST_CASE("a 60 s store outage parks nothing: transient failures are retried until the store is back",
          "[integration][processor]") {
    Env env;
    const int n_events = 20;
    for (int n = 0; n < n_events; ++n) env.append("TestStep", "agg-" + std::to_string(n % 5), {{"n", n}});
    // Every event is in the stream before the store goes away.
    REQUIRE(testing::eventually(
        [&] {
            auto r = env.client->get("/readyz");
            return r.ok() && r->status == 200 && r->json()["relay"]["lag"] == 0;
        },
        10s));
    env.stop_store();
    auto opts = env.options("outage-proc", {"TestStep"});
    opts.max_attempts = 2;  // a deterministic failure would park after 2 attempts: these must not
    std::atomic<int> failures{0};
    processor::Runtime rt(opts, [&](processor::Context& ctx) -> Status {
        auto pos = ctx.append("derived", {.type = "TestDerived", .aggregate_id = ctx.event().aggregate_id});
        if (!pos) {
            ++failures;
            return pos.error();
        }
        return ok();
    });
    REQUIRE(rt.start().ok());
    http::Client health("http://127.0.0.1:" + std::to_string(rt.port()));
    // Not ready while it keeps failing on the store (after 10 s).
    REQUIRE(testing::eventually(
        [&] {
            auto r = health.get("/readyz");
            return r.ok() && r->status == 503 && r->json()["handlers"].get<std::string>().rfind("retrying", 0) == 0;
        },
        20s));
    std::this_thread::sleep_for(45s);
    CHECK(failures.load() > n_events);
    CHECK(env.sql("SELECT count(*) FROM processor_parked")[0][0].as<int>() == 0);
    env.start_store();
    REQUIRE(testing::eventually(
        [&] {
            auto evs = env.all_events();
            return std::count_if(evs.begin(), evs.end(), [](const json& e) { return e["type"] == "TestDerived"; }) == n_events;
        },
        30s));
    CHECK(env.sql("SELECT count(*) FROM processor_parked")[0][0].as<int>() == 0);
    REQUIRE(testing::eventually(
        [&] {
            auto r = health.get("/readyz");
            return r.ok() && r->status == 200;
        },
        15s));
    auto m = get_metrics(rt);
    CHECK(m.find("processor_events_parked_total{processor=\"outage-proc\"} 0") != std::string::npos);
    rt.stop();
}

TEST_CASE("two runtimes of one processor share the partitions, and the survivor takes over a stopped one's share",
          "[integration][processor]") {
    Env env;
    Recorder rec;
    auto opts = env.options("shared-proc", {"TestStep"});
    auto handler = [&](processor::Context& ctx) -> Status {
        rec.record(ctx.event());
        return ok();
    };
    auto a = std::make_unique<processor::Runtime>(opts, handler);
    processor::Runtime b(opts, handler);
    REQUIRE(a->start().ok());
    REQUIRE(b.start().ok());
    REQUIRE(testing::eventually(
        [&] {
            return a->owned_partitions().size() + b.owned_partitions().size() == 16 && !a->owned_partitions().empty() &&
                   !b.owned_partitions().empty();
        },
        10s));
    for (int n = 0; n < 40; ++n) env.append("TestStep", "agg-" + std::to_string(n % 8), {{"n", n}});
    REQUIRE(testing::eventually([&] { return rec.count() == 40; }, 15s));
    auto t0 = std::chrono::steady_clock::now();
    a->stop();  // hands its partitions over
    REQUIRE(testing::eventually([&] { return b.owned_partitions().size() == 16; }, 5s));
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    WARN("hand-over after stop(): " << ms << " ms");
    for (int n = 40; n < 80; ++n) env.append("TestStep", "agg-" + std::to_string(n % 8), {{"n", n}});
    REQUIRE(testing::eventually([&] { return rec.count() == 80; }, 15s));
    std::this_thread::sleep_for(300ms);
    CHECK(rec.count() == 80);  // nothing handled twice across the hand-over
    for (int k = 0; k < 8; ++k) {
        std::vector<int> want;
        for (int n = k; n < 80; n += 8) want.push_back(n);
        CHECK(rec.of("agg-" + std::to_string(k)) == want);
    }
    auto leases = env.sql("SELECT count(*) FROM processor_leases WHERE processor = 'shared-proc' AND owner = '" + b.member_id() +
                          "'::uuid");
    CHECK(leases[0][0].as<int>() == 16);
}

TEST_CASE("a batch handler gets consecutive events of one aggregate; a failing batch falls back to one by one",
          "[integration][processor]") {
    Env env;
    const int n = 200;
    nlohmann::json batch = {{"aggregate_id", "batched"}, {"events", nlohmann::json::array()}};
    for (int i = 0; i < n; ++i) batch["events"].push_back({{"type", "TestStep"}, {"data", {{"n", i}}}});
    auto r = env.client->post_json("/events", batch);
    REQUIRE(r.ok());
    REQUIRE(r->status == 201);
    Recorder rec;
    std::atomic<int> batches{0}, largest{0};
    auto poison = [](const events::Event& e) { return e.data.value("n", -1) == 77; };
    processor::Runtime rt(
        env.options("batch-proc", {"TestStep"}),
        [&](processor::Context& ctx) -> Status {
            if (poison(ctx.event())) return Error::make("bad_event", "77 is refused");
            rec.record(ctx.event());
            return ok();
        },
        [&](const std::vector<processor::Context*>& cs) -> Status {
            // All or nothing: a batch holding the poison event is refused whole.
            for (auto* c : cs)
                if (poison(c->event())) return Error::make("bad_event", "a batch with 77");
            std::int64_t v = cs.front()->event().version.value();
            for (auto* c : cs) {
                REQUIRE(c->event().aggregate_id == "batched");
                REQUIRE(c->event().version.value() == v++);  // consecutive, in order
                rec.record(c->event());
            }
            ++batches;
            largest = std::max<int>(largest.load(), static_cast<int>(cs.size()));
            return ok();
        });
    REQUIRE(rt.start().ok());
    REQUIRE(testing::eventually([&] { return rec.count() == n - 1; }, 30s));
    std::this_thread::sleep_for(300ms);
    auto want = iota_vec(0, n);
    want.erase(want.begin() + 77);
    CHECK(rec.of("batched") == want);  // every event once, in order, 77 parked
    CHECK(batches.load() > 0);
    CHECK(largest.load() > 1);
    REQUIRE(testing::eventually(
        [&] { return env.sql("SELECT count(*) FROM processor_parked WHERE processor = 'batch-proc'")[0][0].as<int>() == 1; },
        10s));
    auto m = get_metrics(rt);
    CHECK(m.find("processor_events_batched_total{processor=\"batch-proc\"} 0") == std::string::npos);
    rt.stop();
}
