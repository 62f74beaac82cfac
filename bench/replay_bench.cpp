// Replay/rebuild throughput next to a raw keyset scan of the same log, same run.
//
//   build/bench/engram-bench-replay [--events N]
//
// Loads N events (conversations over 500 sessions) and a 10 000-event session through the store,
// then times:
//   raw: keyset SELECT of the whole log (position > last ORDER BY position LIMIT 1000), rows fetched;
//   engram: `engram projections rebuild conversation` (scans the log's table, folds every session
//   with the projection code, writes the states);
//   as_of: GET /projections/conversation/<session>?as_of=<head> on a 10 000-event session, next to
//   a raw SELECT of that session's rows.
// Each figure also shows the CPU per event of the client (the bench, the CLI or the store) and of
// PostgreSQL. ENGRAM_BENCH_PROFILE=<file> runs the rebuild under `perf record -g -o <file>`.
#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include "cpu.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <unistd.h>

using namespace engram;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
    int n = 50000;
    for (int i = 1; i < argc; ++i)
        if (!std::strcmp(argv[i], "--events") && i + 1 < argc) n = std::atoi(argv[++i]);

    testing::Postgres pg(testing::PostgresOptions{true, {"shared_buffers=256MB"}, "/tmp"});
    testing::Nats nats;
    auto db = pg.create_database();
    int port = testing::free_port();
    std::string url = "http://127.0.0.1:" + std::to_string(port);
    auto dir = testing::make_temp_dir("bench-replay");
    testing::Process store({testing::build_dir() + "/event-store/engram-event-store"},
                           {{"DATABASE_URL", db},
                            {"NATS_URL", nats.url()},
                            {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(port)},
                            {"LOG_LEVEL", "warn"}},
                           dir + "/store.log");
    http::Client c(url);
    if (!testing::eventually(
            [&] {
                auto r = c.get("/readyz");
                return r.ok() && r->status == 200;
            },
            std::chrono::seconds(30))) {
        std::fprintf(stderr, "store did not start\n");
        return 1;
    }
    for (int done = 0; done < n;) {
        auto agg = "session:web:s" + std::to_string(done / 100 % 500);
        nlohmann::json body = {{"aggregate_id", agg}, {"events", nlohmann::json::array()}};
        for (int k = 0; k < 100 && done < n; ++k, ++done) {
            bool user = done % 2 == 0;
            body["events"].push_back(
                {{"type", user ? "MessageReceived" : "MessageGenerated"},
                 {"data", user ? nlohmann::json{{"channel", "web"},
                                                {"text", "question " + std::to_string(done)},
                                                {"user_id", "u"},
                                                {"session_id", agg}}
                               : nlohmann::json{{"channel", "web"}, {"text", "answer " + std::to_string(done)}}}});
        }
        auto r = c.post_json("/events", body);
        if (!r.ok() || r->status != 201) {
            std::fprintf(stderr, "load failed\n");
            return 1;
        }
    }

    // And one session of 10 000 events (5 000 questions and answers), for as_of.
    const std::string big = "session:web:big";
    const int big_n = 10000;
    const double total = n + big_n;
    for (int done = 0; done < big_n;) {
        nlohmann::json body = {{"aggregate_id", big}, {"events", nlohmann::json::array()}};
        for (int k = 0; k < 100; ++k, ++done)
            body["events"].push_back(
                {{"type", done % 2 ? "MessageGenerated" : "MessageReceived"},
                 {"data", done % 2 ? nlohmann::json{{"channel", "web"}, {"text", "answer " + std::to_string(done)}}
                                   : nlohmann::json{{"channel", "web"},
                                                    {"text", "question " + std::to_string(done)},
                                                    {"user_id", "u"},
                                                    {"session_id", big}}}});
        auto r = c.post_json("/events", body);
        if (!r.ok() || r->status != 201) {
            std::fprintf(stderr, "loading the big session failed: %s\n", r.ok() ? r->body.c_str() : r.error().detail.c_str());
            return 1;
        }
    }
    {  // a settled log: autovacuum's ANALYZE would otherwise land in the middle of a figure
        pqxx::connection pc(db);
        pqxx::nontransaction(pc).exec("VACUUM ANALYZE events");
    }
    const int postmaster = bench::postmaster_pid(pg);
    // Raw: keyset scan of the same table, every column the replay needs.
    double self0 = bench::cpu_seconds(getpid()), pg0 = bench::pg_cpu_seconds(postmaster);
    auto t0 = Clock::now();
    long rows = 0;
    {
        pqxx::connection pc(db);
        long last = 0;
        for (;;) {
            pqxx::read_transaction tx(pc);
            auto r = tx.exec(
                "SELECT position, id, type, aggregate_id, aggregate_version, ts, data::text, metadata::text "
                "FROM events WHERE position > " +
                std::to_string(last) + " ORDER BY position LIMIT 1000");
            if (r.empty()) break;
            rows += r.size();
            last = r[r.size() - 1][0].as<long>();
        }
    }
    double raw_s = std::chrono::duration<double>(Clock::now() - t0).count();
    double raw_client_us = (bench::cpu_seconds(getpid()) - self0) * 1e6 / static_cast<double>(rows);
    double raw_pg_us = (bench::pg_cpu_seconds(postmaster) - pg0) * 1e6 / static_cast<double>(rows);

    t0 = Clock::now();
    // ENGRAM_BENCH_PROFILE=<file>: the rebuild runs under `perf record -g -o <file>`.
    std::vector<std::string> argv_cli{testing::build_dir() + "/interfaces/cli/engram", "projections", "rebuild", "conversation",
                                      "--json"};
    if (const char* prof = std::getenv("ENGRAM_BENCH_PROFILE"); prof && *prof)
        argv_cli.insert(argv_cli.begin(), {"perf", "record", "-g", "-o", prof, "--"});
    // The CLI's CPU: the children this process has reaped (cutime + cstime of /proc/self).
    double reaped0 = bench::cpu_seconds(getpid(), true) - bench::cpu_seconds(getpid());
    pg0 = bench::pg_cpu_seconds(postmaster);
    testing::Process cli(argv_cli, {{"EVENT_STORE_URL", url}, {"DATABASE_URL", db}}, dir + "/rebuild.log");
    int code = cli.wait();
    double rebuild_s = std::chrono::duration<double>(Clock::now() - t0).count();
    double cli_us = (bench::cpu_seconds(getpid(), true) - bench::cpu_seconds(getpid()) - reaped0) * 1e6 / total;
    double rebuild_pg_us = (bench::pg_cpu_seconds(postmaster) - pg0) * 1e6 / total;
    if (code != 0) {
        std::fprintf(stderr, "rebuild failed:\n%s\n", cli.log().c_str());
        return 1;
    }
    if (std::getenv("ENGRAM_BENCH_LOG")) std::fprintf(stderr, "%s", cli.log().c_str());

    auto percentile = [](std::vector<double> v, double q) {
        std::sort(v.begin(), v.end());
        return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
    };
    std::vector<double> raw_ms, asof_ms;
    {
        pqxx::connection pc(db);
        for (int i = 0; i < 20; ++i) {
            auto a = Clock::now();
            pqxx::read_transaction tx(pc);
            auto r = tx.exec("SELECT position, id, type, aggregate_version, ts, data::text FROM events WHERE aggregate_id = " +
                             tx.quote(big) + " ORDER BY aggregate_version");
            if (r.size() != static_cast<std::size_t>(big_n)) return 1;
            raw_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count());
        }
    }
    const std::string asof_path = "/projections/conversation/" + big + "?as_of=" + std::to_string(static_cast<long>(total));
    double store0 = bench::cpu_seconds(store.pid());
    pg0 = bench::pg_cpu_seconds(postmaster);
    for (int i = 0; i < 20; ++i) {
        auto a = Clock::now();
        auto r = c.get(asof_path);
        if (!r.ok() || r->status != 200) {
            std::fprintf(stderr, "as_of failed\n");
            return 1;
        }
        asof_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count());
    }
    double asof_store_us = (bench::cpu_seconds(store.pid()) - store0) * 1e6 / (20.0 * big_n);
    double asof_pg_us = (bench::pg_cpu_seconds(postmaster) - pg0) * 1e6 / (20.0 * big_n);

    std::printf("engram replay benchmark: %.0f events in 501 sessions, PostgreSQL on disk\n\n", total);
    std::printf("  %-50s %9.0f ev/s (%.2f s)  CPU/event: client %4.1f us, PostgreSQL %4.1f us\n",
                "raw: keyset SELECT scan of the log (the limit)", rows / raw_s, raw_s, raw_client_us, raw_pg_us);
    std::printf("  %-50s %9.0f ev/s (%.2f s)  CPU/event: CLI    %4.1f us, PostgreSQL %4.1f us  = %.2fx raw\n",
                "engram: projections rebuild conversation", total / rebuild_s, rebuild_s, cli_us, rebuild_pg_us,
                (total / rebuild_s) / (rows / raw_s));
    std::printf("  %-50s %9.1f ms median, %.1f ms max\n", "raw: SELECT of a 10 000-event session's rows", percentile(raw_ms, 0.5),
                percentile(raw_ms, 1.0));
    std::printf("  %-50s %9.1f ms median, %.1f ms max  CPU/event: store %4.2f us, PostgreSQL %4.2f us\n",
                "engram: as_of on that session (GET /projections)", percentile(asof_ms, 0.5), percentile(asof_ms, 1.0),
                asof_store_us, asof_pg_us);
    std::printf("\ntargets: rebuild >= 0.65x the raw scan; as_of on a 10 000-event session < 50 ms\n");
    return 0;
}
