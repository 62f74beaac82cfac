// Distributed processors: throughput of 1, 2 and 4 AI-processor instances against a model with a
// fixed latency (the model is the bottleneck, so the limit is N x one instance), takeover after
// kill -9 and rebalance after a join, the whole pipeline at saturation with the offline provider,
// and the memory processor on one hot aggregate and on many.
//
//   build/bench/engram-bench-processors [--quick]
#include "engram/core/uuid.h"
#include "engram/events/event.h"
#include "engram/http/client.h"
#include "engram/testing/testing.h"
#include "fake_openai.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>

using namespace engram;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

double secs_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::int64_t scalar(const std::string& db, const std::string& sql) {
    try {
        pqxx::connection c(db);
        pqxx::nontransaction tx(c);
        auto r = tx.exec(sql);
        return r.empty() || r[0][0].is_null() ? 0 : r[0][0].as<std::int64_t>();
    } catch (const std::exception&) {
        return -1;  // the tables do not exist yet
    }
}

// Appends `n` TriggerReceived events, one per session (batched per request for speed).
void post_triggers(testing::Stack& s, int n, const std::string& tag) {
    http::Client c(s.url());
    for (int i = 0; i < n; ++i) {
        json e = {{"type", "TriggerReceived"},
                  {"aggregate_id", "session:api:" + tag + "-" + std::to_string(i)},
                  {"data",
                   {{"source", "bench"},
                    {"user_id", "bench-" + std::to_string(i % 50)},
                    {"session_id", "session:api:" + tag + "-" + std::to_string(i)},
                    {"message", "hello number " + std::to_string(i)}}}};
        auto r = c.post_json("/events", e);
        if (!r || r->status != 201) {
            std::fprintf(stderr, "append failed: %s\n", r ? r->body.c_str() : r.error().detail.c_str());
            std::exit(1);
        }
    }
}

bool wait_for(const std::function<bool()>& f, std::chrono::seconds limit) {
    auto until = Clock::now() + limit;
    while (Clock::now() < until) {
        if (f()) return true;
        std::this_thread::sleep_for(20ms);
    }
    return false;
}

std::map<std::string, std::string> ai_env(const std::string& llm, const std::string& lease_ms) {
    std::map<std::string, std::string> env = {{"AI_PROCESSOR_LISTEN", "127.0.0.1:0"},
                                              {"AI_PROCESSOR_LEASE_TTL_MS", lease_ms},
                                              {"AI_PROCESSOR_CONCURRENCY", "4"},
                                              {"LOG_LEVEL", "warn"}};
    if (!llm.empty()) env["LLM_BASE_URL"] = llm;
    return env;
}

// Partitions of `processor` owned by the live member with this pid.
std::int64_t owned_by_pid(const std::string& db, const std::string& processor, int pid) {
    return scalar(db,
                  "SELECT count(*) FROM processor_leases l JOIN processor_members m ON m.processor = l.processor AND "
                  "m.member = l.owner WHERE l.processor = '" +
                      processor + "' AND l.expires_at > now() AND m.pid = " + std::to_string(pid));
}
std::int64_t owned_live(const std::string& db, const std::string& processor) {
    return scalar(db, "SELECT count(*) FROM processor_leases WHERE processor = '" + processor +
                          "' AND owner IS NOT NULL AND expires_at > now()");
}

struct Stat {
    std::vector<double> v;
    double p50() {
        std::sort(v.begin(), v.end());
        return v.empty() ? 0 : v[v.size() / 2];
    }
    double max() { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }
};

}  // namespace

int main(int argc, char** argv) {
    bool quick = argc > 1 && !std::strcmp(argv[1], "--quick");
    const auto model_latency = 100ms;
    const int runs = quick ? 80 : 240;

    std::printf("engram processors benchmark (2 cores; model latency %lld ms per call, 2 calls per run)\n\n",
                static_cast<long long>(model_latency.count()));

    // --- 1. AI runs/s by instance count ------------------------------------------------------
    double one = 0;
    for (int n : {1, 2, 4}) {
        testing::Stack s("bench-ai-" + std::to_string(n));
        fakes::FakeOpenAI llm(64);  // never the bottleneck: 16 runs wait at most
        llm.on([](const json& req) { return req["messages"].back()["role"] == "tool"; },
               [](const json&) {
                   return fakes::FakeOpenAI::tool_calls_body({{"c2", "task_complete", {{"summary", "ok"}}}});
               },
               model_latency);
        llm.on([](const json&) { return true; },
               [](const json&) {
                   return fakes::FakeOpenAI::tool_calls_body({{"c1", "send_message", {{"text", "hi"}}}});
               },
               model_latency);
        std::vector<std::unique_ptr<testing::Process>> procs;
        for (int i = 0; i < n; ++i) procs.push_back(s.start("ai-processor/engram-ai-processor", ai_env(llm.base_url(), "3000")));
        if (!wait_for(
                [&] {
                    return owned_live(s.db(), "ai-processor") == 16 &&
                           scalar(s.db(),
                                  "SELECT count(DISTINCT owner) FROM processor_leases WHERE processor = "
                                  "'ai-processor'") == n;
                },
                30s)) {
            std::fprintf(stderr, "instances did not share the partitions\n");
            return 1;
        }
        post_triggers(s, runs, "ai" + std::to_string(n));
        auto t0 = Clock::now();
        if (!wait_for([&] { return s.count("AIProcessingCompleted") >= runs; }, 300s)) {
            std::fprintf(stderr, "runs did not complete\n");
            return 1;
        }
        double rate = runs / secs_since(t0);
        if (n == 1) one = rate;
        double limit = n * 4 * 1000.0 / (2 * model_latency.count());  // workers x instances / run latency
        std::printf("  %-58s %8.1f runs/s  (%.2fx one instance; model-bound limit %.0f; target >= %.1fx)\n",
                    ("AI runs, " + std::to_string(n) + " instance(s) x 4 workers").c_str(), rate, rate / one, limit, 0.9 * n);
    }

    // --- 2. Takeover after kill -9 and rebalance after a join ---------------------------------
    {
        testing::Stack s("bench-takeover");
        std::vector<std::unique_ptr<testing::Process>> procs;
        for (int i = 0; i < 2; ++i) procs.push_back(s.start("ai-processor/engram-ai-processor", ai_env("", "6000")));
        Stat takeover, rebalance;
        const int trials = quick ? 2 : 4;
        for (int t = 0; t < trials; ++t) {
            wait_for(
                [&] {
                    return owned_by_pid(s.db(), "ai-processor", procs[0]->pid()) > 0 &&
                           owned_by_pid(s.db(), "ai-processor", procs[1]->pid()) > 0;
                },
                30s);
            int victim = t % 2;
            int survivor = 1 - victim;
            auto t0 = Clock::now();
            procs[victim]->kill9();
            if (!wait_for([&] { return owned_by_pid(s.db(), "ai-processor", procs[survivor]->pid()) == 16; }, 30s)) return 1;
            takeover.v.push_back(secs_since(t0));
            procs[victim] = s.start("ai-processor/engram-ai-processor", ai_env("", "6000"));
            t0 = Clock::now();
            if (!wait_for(
                    [&] {
                        return owned_by_pid(s.db(), "ai-processor", procs[victim]->pid()) > 0 &&
                               owned_live(s.db(), "ai-processor") == 16;
                    },
                    30s))
                return 1;
            rebalance.v.push_back(secs_since(t0));  // from the start of the process: includes its start-up
        }
        std::printf("  %-58s p50 %5.2f s, max %5.2f s  (bound: lease 6 s + tick 1 s = 7 s; %zu trials)\n",
                    "takeover after kill -9 (2 instances, 16 partitions)", takeover.p50(), takeover.max(), takeover.v.size());
        std::printf("  %-58s p50 %5.2f s, max %5.2f s  (from process start; 2 ticks + start-up)\n", "rebalance after a join",
                    rebalance.p50(), rebalance.max());
    }

    // --- 3. The pipeline at saturation: offline provider, no model latency --------------------
    {
        testing::Stack s("bench-saturation");
        std::vector<std::unique_ptr<testing::Process>> procs;
        procs.push_back(s.start("ai-processor/engram-ai-processor", ai_env("", "3000")));
        wait_for([&] { return owned_live(s.db(), "ai-processor") == 16; }, 30s);
        const int n = quick ? 300 : 1000;
        post_triggers(s, n, "sat");
        auto t0 = Clock::now();
        if (!wait_for([&] { return s.count("AIProcessingCompleted") >= n; }, 300s)) return 1;
        double rate = n / secs_since(t0);
        auto evs = s.count_all();
        std::printf("  %-58s %8.1f runs/s  (%lld events in the log; before partitions: ~50 runs/s; target >= 2x)\n",
                    "AI runs at saturation, offline provider, 1 instance", rate, static_cast<long long>(evs));
    }

    // --- 4. Memory processor: one hot aggregate, and many --------------------------------------
    for (int aggs : {1, 200}) {
        testing::Stack s("bench-memory-" + std::to_string(aggs));
        const int n = quick ? 600 : 2000;
        http::Client c(s.url());
        for (int i = 0; i < n; i += 100) {
            json batch = json::array();
            for (int k = i; k < i + 100; ++k) {
                auto session = "session:api:mem-" + std::to_string(k % aggs);
                json e = {{"type", "MessageReceived"},
                          {"aggregate_id", session},
                          {"data",
                           {{"channel", "api"},
                            {"user_id", "u" + std::to_string(k % aggs)},
                            {"session_id", session},
                            {"text", "message " + std::to_string(k)}}}};
                auto r = c.post_json("/events", e);
                if (!r || r->status != 201) {
                    std::fprintf(stderr, "append failed: %s\n", r ? r->body.c_str() : r.error().detail.c_str());
                    return 1;
                }
            }
        }
        auto t0 = Clock::now();
        auto p = s.start("memory-processor/engram-memory-processor",
                         {{"MEMORY_PROCESSOR_LISTEN", "127.0.0.1:0"}, {"LOG_LEVEL", "warn"}});
        if (!wait_for(
                [&] {
                    return scalar(s.db(),
                                  "SELECT coalesce(sum(version), 0) FROM projection_state WHERE name = "
                                  "'conversation'") >= n;
                },
                600s)) {
            std::fprintf(stderr, "memory processor did not finish\n");
            return 1;
        }
        double rate = n / secs_since(t0);
        std::printf("  %-58s %8.1f ev/s  (includes start-up; target on one hot aggregate >= 2000)\n",
                    ("memory processor, " + std::to_string(n) + " events on " + std::to_string(aggs) + " aggregate(s)").c_str(),
                    rate);
    }
    return 0;
}
