// SSE fan-out latency with many clients, next to NATS core fan-out to as many subscribers (the
// limit: what delivering one message to N listeners costs on this machine), same run.
//
//   build/bench/engram-bench-sse [--clients N] [--events M] [--rate R]
//
// R events per second (default 100) are appended in one request every 10 ms (R/100 events each,
// one aggregate); latency is from the request's start to each client's receipt.
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/nats/nats.h"
#include "engram/testing/testing.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

using namespace engram;
using Clock = std::chrono::steady_clock;

namespace {

struct Sample {
    std::mutex mu;
    std::vector<double> ms;
};

void report(const char* name, std::vector<double> v, std::size_t expected) {
    std::sort(v.begin(), v.end());
    if (v.empty()) {
        std::printf("  %-40s no deliveries\n", name);
        return;
    }
    std::printf("  %-40s p50 %7.2f ms   p99 %7.2f ms   max %7.2f ms   (%zu of %zu deliveries)\n", name, v[v.size() / 2],
                v[std::min(v.size() - 1, v.size() * 99 / 100)], v.back(), v.size(), expected);
}

}  // namespace

int main(int argc, char** argv) {
    int clients = 200, events = 100, rate = 100;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--clients") && i + 1 < argc) clients = std::atoi(argv[++i]);
        if (!std::strcmp(argv[i], "--events") && i + 1 < argc) events = std::atoi(argv[++i]);
        if (!std::strcmp(argv[i], "--rate") && i + 1 < argc) rate = std::max(1, std::atoi(argv[++i]));
    }
    testing::Nats nats;
    auto db = testing::Postgres::shared().create_database();
    int port = testing::free_port();
    std::string url = "http://127.0.0.1:" + std::to_string(port);
    testing::Process store({testing::build_dir() + "/event-store/engram-event-store"},
                           {{"DATABASE_URL", db},
                            {"NATS_URL", nats.url()},
                            {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(port)},
                            // Every reader connects from 127.0.0.1: the caps must admit them all.
                            {"EVENT_STORE_SSE_MAX_STREAMS", std::to_string(std::max(512, clients + 16))},
                            {"EVENT_STORE_SSE_MAX_PER_CLIENT", std::to_string(std::max(320, clients + 16))},
                            {"EVENT_STORE_MAX_CONNECTIONS", std::to_string(std::max(1024, clients + 64))},
                            {"LOG_LEVEL", "warn"}},
                           testing::make_temp_dir("bench-sse") + "/store.log");
    http::Client c(url);
    if (!testing::eventually(
            [&] {
                auto r = c.get("/readyz");
                return r.ok() && r->status == 200;
            },
            std::chrono::seconds(30)))
        return 1;

    // Send times by event number, shared by both measurements.
    std::vector<Clock::time_point> sent(events);
    std::atomic<int> published{-1};

    // engram: N SSE clients on one aggregate.
    Sample sse;
    std::atomic<int> connected{0};
    std::vector<std::thread> readers;
    for (int k = 0; k < clients; ++k)
        readers.emplace_back([&] {
            http::Client rc(url);
            int got = 0;
            bool first = true;
            rc.sse(
                "/events/stream?aggregate_id=bench:sse", {},
                [&](const std::string&, const std::string&, const std::string& data) {
                    if (first) {
                        first = false;
                    }
                    auto n = nlohmann::json::parse(data)["data"]["n"].get<int>();
                    if (n < 0) {  // the warm-up event: this client is live
                        connected++;
                        return true;
                    }
                    double ms = std::chrono::duration<double, std::milli>(Clock::now() - sent[n]).count();
                    {
                        std::lock_guard lk(sse.mu);
                        sse.ms.push_back(ms);
                    }
                    return ++got < events;
                },
                std::chrono::seconds(20));
        });
    c.post_json("/events", {{"type", "BenchProbe"}, {"aggregate_id", "bench:sse"}, {"data", {{"n", -1}}}});
    testing::eventually([&] { return connected.load() == clients; }, std::chrono::seconds(30));
    const int per_tick = std::max(1, rate / 100);
    auto tick = Clock::now();
    for (int n = 0; n < events;) {
        nlohmann::json body = {{"aggregate_id", "bench:sse"}, {"events", nlohmann::json::array()}};
        auto now = Clock::now();
        for (int k = 0; k < per_tick && n < events; ++k, ++n) {
            sent[n] = now;
            body["events"].push_back({{"type", "BenchProbe"}, {"data", {{"n", n}}}});
        }
        c.post_json("/events", body);
        tick += std::chrono::milliseconds(10);
        std::this_thread::sleep_until(tick);
    }
    for (auto& t : readers) t.join();

    // Limit: NATS core, one publish to N subscribers.
    Sample raw;
    nats::ConnectOptions o;
    o.url = nats.url();
    auto pub = nats::Connection::connect(o);
    std::vector<std::unique_ptr<nats::Connection>> conns;
    std::vector<std::unique_ptr<nats::Subscription>> subs;
    for (int k = 0; k < clients; ++k) {
        auto sc = nats::Connection::connect(o);
        if (!sc) return 1;
        auto s = (*sc)->subscribe("bench.fanout", "", [&](const nats::Message& m, nats::Replier&) {
            auto n = std::atoi(m.data.c_str());
            double ms = std::chrono::duration<double, std::milli>(Clock::now() - sent[n]).count();
            std::lock_guard lk(raw.mu);
            raw.ms.push_back(ms);
        });
        if (!s) return 1;
        (*sc)->flush(std::chrono::seconds(2));
        subs.push_back(std::move(*s));
        conns.push_back(std::move(*sc));
    }
    tick = Clock::now();
    for (int n = 0; n < events;) {
        auto now = Clock::now();
        for (int k = 0; k < per_tick && n < events; ++k, ++n) {
            sent[n] = now;
            (*pub)->publish("bench.fanout", std::to_string(n));
        }
        tick += std::chrono::milliseconds(10);
        std::this_thread::sleep_until(tick);
    }
    testing::eventually(
        [&] {
            std::lock_guard lk(raw.mu);
            return raw.ms.size() >= std::size_t(clients) * events;
        },
        std::chrono::seconds(10));
    subs.clear();

    std::printf("SSE fan-out: %d clients on one aggregate, %d events at %d/s (%d per request every 10 ms), %u cores\n\n", clients,
                events, per_tick * 100, per_tick, std::thread::hardware_concurrency());
    report("limit: NATS core publish -> subscribers", raw.ms, std::size_t(clients) * events);
    report("engram: HTTP append -> SSE clients", sse.ms, std::size_t(clients) * events);
    std::printf("\ntarget: 1 000 clients at 1 000 events/s with p99 < 50 ms\n");
    return 0;
}
