// Append throughput and latency of engram next to raw PostgreSQL on the same machine, same run.
//
//   build/bench/engram-bench-append [--seconds N]
//
// Starts its own PostgreSQL (fsync on: the durability engram promises) and nats-server, and the
// engram-event-store binary, then measures:
//   raw PostgreSQL: one-row INSERT per commit (16 clients) and 100-row INSERT per transaction;
//   engram over HTTP: single-event appends (16 and 64 keep-alive clients) and 100-event batches.
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/nats/nats.h"
#include "engram/testing/testing.h"

#include "cpu.h"

#include <pqxx/pqxx>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

using namespace engram;
using bench::cpu_seconds;
using bench::pg_cpu_seconds;
using Clock = std::chrono::steady_clock;

namespace {

struct Figures {
    double events_per_s = 0;
    double p50_ms = 0, p99_ms = 0;
    long errors = 0;
    double store_us = 0, pg_us = 0;  // CPU time per event of the store process and of PostgreSQL
};

// Runs `op` on `clients` threads for `seconds`; op(thread, i) returns events written (0 = error).
template <class Setup, class Op>
Figures run(int clients, double seconds, Setup setup, Op op) {
    std::atomic<bool> stop{false};
    std::atomic<long> events{0}, errors{0};
    std::vector<std::vector<double>> lat(clients);
    std::vector<std::thread> ts;
    std::atomic<int> ready{0};
    for (int t = 0; t < clients; ++t)
        ts.emplace_back([&, t] {
            auto ctx = setup(t);
            ready++;
            while (ready.load() < clients) std::this_thread::yield();
            for (long i = 0; !stop.load(std::memory_order_relaxed); ++i) {
                auto t0 = Clock::now();
                int n = op(*ctx, t, i);
                lat[t].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
                if (n > 0)
                    events += n;
                else
                    errors++;
            }
        });
    while (ready.load() < clients) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    auto start = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : ts) t.join();
    double el = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<double> all;
    for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end());
    Figures f;
    f.events_per_s = events / el;
    f.errors = errors;
    if (!all.empty()) {
        f.p50_ms = all[all.size() / 2];
        f.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
    }
    return f;
}

const char* kRawSchema = R"SQL(
CREATE TABLE IF NOT EXISTS raw_events (
    position bigserial PRIMARY KEY, id uuid NOT NULL UNIQUE, type text NOT NULL, aggregate_id text NOT NULL,
    aggregate_version bigint NOT NULL, ts timestamptz NOT NULL DEFAULT now(), data jsonb NOT NULL,
    metadata jsonb NOT NULL, UNIQUE (aggregate_id, aggregate_version));
CREATE INDEX IF NOT EXISTS raw_events_type ON raw_events (type, position);
)SQL";

const std::string kData = R"({"channel":"web","text":"hello from the benchmark","user_id":"u1","session_id":"s1"})";
const std::string kMeta = R"({"source":"bench","correlation_id":"c1"})";

std::string raw_row(int t, long v) {
    return "('" + Uuid::v4().str() + "','MessageReceived','session:web:raw-" + std::to_string(t) + "'," + std::to_string(v) +
           ",'" + kData + "','" + kMeta + "')";
}

nlohmann::json event_json(const std::string& agg) {
    return {{"type", "MessageReceived"},
            {"aggregate_id", agg},
            {"data", nlohmann::json::parse(kData)},
            {"metadata", nlohmann::json::parse(kMeta)}};
}

// What a figure cost in CPU: the store process and the PostgreSQL server, per event.
struct Cpu {
    int store_pid = 0, pg_pid = 0;
    double store0 = 0, pg0 = 0;
    void start() {
        store0 = store_pid ? cpu_seconds(store_pid) : 0;
        pg0 = pg_cpu_seconds(pg_pid);
    }
    // Adds the per-event figures of the run just measured to f.
    void stop(Figures& f, double seconds) {
        double events = f.events_per_s * seconds;
        if (events <= 0) return;
        if (store_pid) f.store_us = (cpu_seconds(store_pid) - store0) * 1e6 / events;
        f.pg_us = (pg_cpu_seconds(pg_pid) - pg0) * 1e6 / events;
    }
};

void print(const char* name, const Figures& f, const Figures* limit) {
    std::printf("  %-40s %8.0f ev/s  p50 %6.2f ms  p99 %6.2f ms", name, f.events_per_s, f.p50_ms, f.p99_ms);
    if (limit && limit->events_per_s > 0)
        std::printf("  = %4.2fx raw", f.events_per_s / limit->events_per_s);
    else
        std::printf("             ");
    std::printf("  CPU/event: PostgreSQL %5.1f us", f.pg_us);
    if (f.store_us > 0) std::printf(", store %5.1f us", f.store_us);
    if (f.errors) std::printf("   (%ld errors)", f.errors);
    std::printf("\n");
}

struct Latency {
    double p50_ms = 0, p99_ms = 0;
    std::size_t samples = 0;
};

Latency percentiles(std::vector<double> v) {
    Latency l;
    l.samples = v.size();
    if (v.empty()) return l;
    std::sort(v.begin(), v.end());
    l.p50_ms = v[v.size() / 2];
    l.p99_ms = v[std::min(v.size() - 1, v.size() * 99 / 100)];
    return l;
}

// Sends `n` messages one at a time through `send(id)` and measures until a durable pull consumer on
// `stream`/`subject` receives each (matched by Nats-Msg-Id).
template <class Send>
Latency delivery(nats::Connection& nc, const std::string& stream, const std::string& subject, const std::string& durable, int n,
                 Send send) {
    nats::ConsumerOptions co;
    co.stream = stream;
    co.durable = durable;
    co.filter_subjects = {subject};
    auto consumer = nats::PullConsumer::create(nc, co);
    if (!consumer) {
        std::fprintf(stderr, "consumer: %s\n", consumer.error().detail.c_str());
        return {};
    }
    // Drain what is already there.
    for (;;) {
        auto msgs = (*consumer)->fetch(1000, std::chrono::milliseconds(200));
        if (!msgs || msgs->empty()) break;
        for (auto& m : *msgs) m->ack();
    }
    std::vector<double> lat;
    for (int i = 0; i < n; ++i) {
        auto id = Uuid::v4().str();
        auto t0 = Clock::now();
        if (!send(id)) continue;
        bool got = false;
        while (!got) {
            auto msgs = (*consumer)->fetch(1, std::chrono::milliseconds(2000));
            if (!msgs || msgs->empty()) break;
            for (auto& m : *msgs) {
                m->ack();
                if (m->msg().headers.count("Nats-Msg-Id") && m->msg().headers.at("Nats-Msg-Id") == id) got = true;
            }
        }
        if (got) lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    return percentiles(lat);
}

// Mean of a Prometheus histogram of the store (sum / count), from GET /metrics.
double metric_mean(const std::string& url, const std::string& name) {
    http::Client c(url);
    auto r = c.get("/metrics");
    if (!r.ok()) return 0;
    auto value = [&](const std::string& key) {
        auto p = r->body.find("\n" + key + " ");
        return p == std::string::npos ? 0.0 : std::atof(r->body.c_str() + p + key.size() + 2);
    };
    double n = value(name + "_count");
    return n > 0 ? value(name + "_sum") / n : 0;
}

}  // namespace

int main(int argc, char** argv) {
    double seconds = 5;
    for (int i = 1; i < argc; ++i)
        if (!std::strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = std::atof(argv[++i]);

    // On disk, not tmpfs: fsync must cost what it costs in production.
    testing::Postgres pg(testing::PostgresOptions{true, {"shared_buffers=256MB", "max_connections=300"}, "/tmp"});
    testing::Nats nats;
    std::string raw_db = pg.create_database(), store_db = pg.create_database();
    {
        pqxx::connection c(raw_db);
        pqxx::work tx(c);
        tx.exec(kRawSchema);
        tx.commit();
    }
    int port = testing::free_port();
    std::string url = "http://127.0.0.1:" + std::to_string(port);
    testing::Process store({testing::build_dir() + "/event-store/engram-event-store"},
                           {{"DATABASE_URL", store_db},
                            {"NATS_URL", nats.url()},
                            {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(port)},
                            {"EVENT_STORE_HTTP_THREADS", "32"},
                            {"LOG_LEVEL", "warn"}},
                           testing::make_temp_dir("bench") + "/store.log");
    if (!testing::eventually(
            [&] {
                http::Client c(url);
                auto r = c.get("/readyz");
                return r.ok() && r->status == 200;
            },
            std::chrono::seconds(30))) {
        std::fprintf(stderr, "event store did not become ready:\n%s\n", store.log().c_str());
        return 1;
    }

    std::printf("engram append benchmark: %.0f s per figure, %u cores, PostgreSQL fsync=on\n\n", seconds,
                std::thread::hardware_concurrency());

    int postmaster = bench::postmaster_pid(pg);
    Cpu raw_cpu{0, postmaster}, cpu{store.pid(), postmaster};
    auto pg_setup = [&](int) { return std::make_unique<pqxx::connection>(raw_db); };
    std::vector<long> versions(64, 0);
    raw_cpu.start();
    auto raw1 = run(16, seconds, pg_setup, [&](pqxx::connection& c, int t, long) {
        pqxx::work tx(c);
        tx.exec("INSERT INTO raw_events (id, type, aggregate_id, aggregate_version, data, metadata) VALUES " +
                raw_row(t, ++versions[t]));
        tx.commit();
        return 1;
    });
    raw_cpu.stop(raw1, seconds);
    raw_cpu.start();
    auto raw100 = run(16, seconds, pg_setup, [&](pqxx::connection& c, int t, long) {
        std::string sql = "INSERT INTO raw_events (id, type, aggregate_id, aggregate_version, data, metadata) VALUES ";
        for (int k = 0; k < 100; ++k) sql += (k ? "," : "") + raw_row(t, ++versions[t]);
        pqxx::work tx(c);
        tx.exec(sql);
        tx.commit();
        return 100;
    });
    raw_cpu.stop(raw100, seconds);

    auto http_setup = [&](int) { return std::make_unique<http::Client>(url); };
    // Pre-built bodies (the store assigns the ids): the clients do no JSON work, as the raw
    // baseline does none, and the CPU they leave is the store's and PostgreSQL's.
    std::vector<std::string> single_body(64), batch_body(16);
    for (int t = 0; t < 64; ++t) single_body[t] = event_json("session:web:b" + std::to_string(t)).dump();
    for (int t = 0; t < 16; ++t) {
        auto agg = "session:web:batch" + std::to_string(t);
        nlohmann::json body = {{"aggregate_id", agg}, {"events", nlohmann::json::array()}};
        for (int k = 0; k < 100; ++k) body["events"].push_back(event_json(agg));
        batch_body[t] = body.dump();
    }
    const http::Headers json_type{{"Content-Type", "application/json"}};
    auto single = [&](http::Client& c, int t, long) {
        auto r = c.request("POST", "/events", single_body[static_cast<std::size_t>(t)], json_type);
        return r.ok() && r->status == 201 ? 1 : 0;
    };
    // ENGRAM_BENCH_PROFILE=<file>: the store is profiled (`perf record --call-graph=dwarf`: the build has no frame pointers)
    // during the figure ENGRAM_BENCH_PROFILE_FIGURE names: single (default), batch.
    std::unique_ptr<testing::Process> profiler;
    const char* prof = std::getenv("ENGRAM_BENCH_PROFILE");
    const std::string prof_figure =
        std::getenv("ENGRAM_BENCH_PROFILE_FIGURE") ? std::getenv("ENGRAM_BENCH_PROFILE_FIGURE") : "single";
    auto profile = [&](const char* figure) {
        if (prof && *prof && prof_figure == figure)
            profiler =
                std::make_unique<testing::Process>(std::vector<std::string>{"perf", "record", "--call-graph=dwarf,32768", "-F",
                                                                            "499", "-p", std::to_string(store.pid()), "-o", prof},
                                                   std::map<std::string, std::string>{}, std::string(prof) + ".log");
    };
    auto end_profile = [&] {
        if (profiler) profiler->terminate_and_wait();
        profiler.reset();
    };
    profile("single");
    cpu.start();
    auto e16 = run(16, seconds, http_setup, single);
    cpu.stop(e16, seconds);
    end_profile();
    cpu.start();
    auto e64 = run(64, seconds, http_setup, single);
    cpu.stop(e64, seconds);
    profile("batch");
    cpu.start();
    auto batch_append = [&](http::Client& c, int t, long) {
        auto r = c.request("POST", "/events", batch_body[static_cast<std::size_t>(t)], json_type);
        return r.ok() && r->status == 201 ? 100 : 0;
    };
    auto batch = run(16, seconds, http_setup, batch_append);
    cpu.stop(batch, seconds);
    end_profile();

    // The same single-event figure with the relay standing by (its lease taken by a stranger, so
    // nothing is published): what publishing to JetStream costs the store.
    auto relay_active = [&] {
        auto r = http::Client(url).get("/readyz");
        if (!r.ok()) return false;
        auto j = nlohmann::json::parse(r->body, nullptr, false);
        return j.is_object() && j["relay"].value("active", false);
    };
    auto set_lease = [&](const char* sql) {
        pqxx::connection pc(store_db);
        pqxx::work tx(pc);
        tx.exec(sql);
        tx.commit();
    };
    set_lease(
        "UPDATE relay_lease SET owner = 'bench-pause', epoch = epoch + 1, expires_at = now() + interval '1 hour' "
        "WHERE stream = 'EVENTS'");
    if (!testing::eventually([&] { return !relay_active(); }, std::chrono::seconds(30))) {
        std::fprintf(stderr, "the relay did not stand by\n");
        return 1;
    }
    cpu.start();
    auto paused = run(16, seconds, http_setup, single);
    cpu.stop(paused, seconds);
    cpu.start();
    auto paused_batch = run(16, seconds, http_setup, batch_append);
    cpu.stop(paused_batch, seconds);
    set_lease("UPDATE relay_lease SET expires_at = now() - interval '1 second' WHERE stream = 'EVENTS'");
    if (!testing::eventually(relay_active, std::chrono::seconds(30))) {
        std::fprintf(stderr, "the relay did not resume\n");
        return 1;
    }

    std::printf("limits (raw PostgreSQL, same schema shape):\n");
    print("raw INSERT, 1 row per commit, 16 clients", raw1, nullptr);
    print("raw INSERT, 100 rows per commit, 16 clients", raw100, nullptr);
    std::printf("engram over HTTP (group commit):\n");
    print("single-event appends, 16 clients", e16, &raw1);
    print("single-event appends, 64 clients", e64, &raw1);
    print("100-event batch appends, 16 clients", batch, &raw100);
    print("single-event, 16 clients, relay paused", paused, &raw1);
    print("100-event batches, 16 clients, relay paused", paused_batch, &raw100);
    // Append → JetStream consumer delivery, one event at a time, next to publishing straight to
    // JetStream (the limit: what NATS alone costs).
    nats::ConnectOptions no;
    no.url = nats.url();
    auto nc = nats::Connection::connect(no);
    if (!nc) {
        std::fprintf(stderr, "nats: %s\n", nc.error().detail.c_str());
        return 1;
    }
    (*nc)->ensure_stream("RAW", {"raw.>"});
    auto raw_delivery = delivery(**nc, "RAW", "raw.x", "bench_raw", 500, [&](const std::string& id) {
        auto r = (*nc)->publish_sync("raw.x", kData, id);
        return r.ok();
    });
    http::Client dc(url);
    auto engram_delivery = delivery(**nc, "EVENTS", "events.BenchProbe.*", "bench_probe", 500, [&](const std::string& id) {
        nlohmann::json e = {{"id", id}, {"type", "BenchProbe"}, {"aggregate_id", "bench:probe"}, {"data", {{"n", 1}}}};
        auto r = dc.post_json("/events", e);
        return r.ok() && r->status == 201;
    });
    std::printf("delivery to a JetStream pull consumer (one event at a time, %zu samples):\n", engram_delivery.samples);
    std::printf("  %-44s p50 %7.2f ms   p99 %7.2f ms\n", "raw: JetStream publish -> consumer", raw_delivery.p50_ms,
                raw_delivery.p99_ms);
    std::printf("  %-44s p50 %7.2f ms   p99 %7.2f ms   (target p99 < 15 ms)\n", "engram: HTTP append -> consumer",
                engram_delivery.p50_ms, engram_delivery.p99_ms);

    std::printf(
        "\nengram internals over the whole run: %.1f requests and %.1f events per group commit, "
        "%.2f ms per commit transaction\n",
        metric_mean(url, "engram_commit_batch_requests"), metric_mean(url, "engram_commit_batch_events"),
        1000 * metric_mean(url, "engram_commit_seconds"));
    std::printf(
        "\ntargets: single-event >= 2.5x raw 1-row rate with p99 < 10 ms; batches >= 0.70x raw batched rate; delivery p99 < "
        "15 ms\n(CPU/event: time the process spent on the CPU during the figure's run, over the events it stored; the "
        "clients and the benchmark's own threads are not counted)\n");
    return 0;
}
