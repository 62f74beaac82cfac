// kill -9 the real engram-event-store binary in the middle of concurrent appends.
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/nats/nats.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <mutex>
#include <set>
#include <thread>

using namespace engram;
using nlohmann::json;

namespace {

struct StoreProcess {
    std::string db, nats_url;
    int port = testing::free_port();
    std::string dir = testing::make_temp_dir("store-fault");
    std::unique_ptr<testing::Process> proc;
    int starts = 0;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
    void start() {
        proc = std::make_unique<testing::Process>(
            std::vector<std::string>{testing::build_dir() + "/event-store/engram-event-store"},
            std::map<std::string, std::string>{{"DATABASE_URL", db},
                                               {"NATS_URL", nats_url},
                                               {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(port)},
                                               {"LOG_LEVEL", "info"}},
            dir + "/store-" + std::to_string(++starts) + ".log");
        REQUIRE(testing::eventually(
            [&] {
                http::Client c(url());
                auto r = c.get("/events?limit=1");
                return r.ok() && r->status == 200;
            },
            std::chrono::seconds(20)));
    }
};

}  // namespace

TEST_CASE("kill -9 during appends: every acknowledged event is stored once and published once, in order",
          "[integration][fault]") {
    testing::Nats nats;
    StoreProcess s{testing::Postgres::shared().create_database(), nats.url()};
    s.start();

    std::mutex mu;
    std::set<std::string> acknowledged, attempted;
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    for (int t = 0; t < 6; ++t)
        clients.emplace_back([&, t] {
            http::Client c(s.url(), http::ClientOptions{std::chrono::milliseconds(2000)});
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
                // Retry the same id until the store answers: a retry after a crash must not duplicate.
                for (int attempt = 0; attempt < 200 && !stop; ++attempt) {
                    auto r = c.post_json("/events", e);
                    if (r.ok() && (r->status == 201 || r->status == 200)) {
                        std::lock_guard lk(mu);
                        acknowledged.insert(id);
                        break;
                    }
                    std::this_thread::sleep_for(std::chrono::milliseconds(20));
                }
            }
        });
    for (int round = 0; round < 3; ++round) {
        std::this_thread::sleep_for(std::chrono::milliseconds(700));
        s.proc->kill9();
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        s.start();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    stop = true;
    for (auto& c : clients) c.join();
    REQUIRE(acknowledged.size() > 100);

    pqxx::connection c(s.db);
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

    nats::ConnectOptions no;
    no.url = nats.url();
    auto nc = nats::Connection::connect(no);
    REQUIRE(nc.ok());
    REQUIRE(testing::eventually(
        [&] {
            auto info = (*nc)->stream_info("EVENTS");
            return info.ok() && info->messages >= ids_by_position.size();
        },
        std::chrono::seconds(20)));
    auto info = (*nc)->stream_info("EVENTS");
    REQUIRE(info->messages == ids_by_position.size());
    std::size_t i = 0;
    for (std::uint64_t seq = info->first_seq; seq <= info->last_seq; seq += 500) {
        auto msgs = (*nc)->get_stream_messages("EVENTS", seq, 500);
        REQUIRE(msgs.ok());
        for (auto& m : *msgs) {
            REQUIRE(i < ids_by_position.size());
            CHECK(m.headers["Nats-Msg-Id"] == ids_by_position[i]);
            CHECK(m.headers["Engram-Position"] == std::to_string(i + 1));
            ++i;
        }
    }
    CHECK(i == ids_by_position.size());
}

TEST_CASE("the binary refuses a bad configuration with one line", "[integration][config]") {
    auto run = [](std::map<std::string, std::string> env) {
        auto dir = testing::make_temp_dir("store-cfg");
        testing::Process p({testing::build_dir() + "/event-store/engram-event-store"}, env, dir + "/out.log");
        int code = p.wait();
        return std::make_pair(code, p.log());
    };
    auto [code, out] = run({{"EVENT_STORE_LISTEN", "0.0.0.0:18089"}});
    CHECK(code != 0);
    CHECK(out.find("ENGRAM_API_TOKEN") != std::string::npos);
    CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    auto [code2, out2] = run({{"LOG_LEVEL", "loud"}, {"DATABASE_URL", "mysql://x"}});
    CHECK(code2 != 0);
    CHECK(out2.find("LOG_LEVEL") != std::string::npos);
    CHECK(out2.find("DATABASE_URL") != std::string::npos);
    CHECK(std::count(out2.begin(), out2.end(), '\n') == 1);
}
