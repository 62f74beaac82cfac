// Replay/rebuild throughput next to a raw keyset scan of the same log, same run.
//
//   build/bench/engram-bench-replay [--events N]
//
// Loads N events (conversations over 500 sessions) through the store, then times:
//   raw: keyset SELECT of the whole log (position > last ORDER BY position LIMIT 1000), rows fetched;
//   engram: `engram projections rebuild conversation` (reads the log through the store's API,
//   folds every session with the projection code, writes the rows).
#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <pqxx/pqxx>

#include <cstdio>
#include <cstring>

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

    // Raw: keyset scan of the same table, every column the replay needs.
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

    t0 = Clock::now();
    testing::Process cli({testing::build_dir() + "/interfaces/cli/engram", "projections", "rebuild", "conversation", "--json"},
                         {{"EVENT_STORE_URL", url}, {"DATABASE_URL", db}}, dir + "/rebuild.log");
    int code = cli.wait();
    double rebuild_s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (code != 0) {
        std::fprintf(stderr, "rebuild failed:\n%s\n", cli.log().c_str());
        return 1;
    }
    std::printf("engram replay benchmark: %d events in 500 sessions, PostgreSQL on disk\n\n", n);
    std::printf("  %-52s %10.0f ev/s  (%ld rows, %.2f s)\n", "raw: keyset SELECT scan of the log (the limit)", rows / raw_s, rows,
                raw_s);
    std::printf("  %-52s %10.0f ev/s  (%.2f s)   = %.2fx raw\n", "engram: projections rebuild conversation (CLI)", n / rebuild_s,
                rebuild_s, (n / rebuild_s) / (rows / raw_s));
    std::printf("\ntarget: rebuild >= 0.65x the raw scan\n");
    return 0;
}
