#include <catch2/catch.hpp>

#include "engram/metrics/metrics.h"

using namespace engram::metrics;

TEST_CASE("registry renders prometheus text", "[unit][metrics]") {
    Registry r;
    r.counter("engram_appends_total", "appends", "result=\"created\"").inc(3);
    r.gauge("engram_sse_clients", "open streams").set(2);
    auto& h = r.histogram("engram_append_seconds", "latency", {0.001, 0.01});
    h.observe(0.0005);
    h.observe(0.005);
    h.observe(1);
    r.gauge_fn("engram_relay_lag", "events not yet published", [] { return 7.0; });
    auto t = r.render();
    CHECK(t.find("# TYPE engram_appends_total counter") != std::string::npos);
    CHECK(t.find("engram_appends_total{result=\"created\"} 3") != std::string::npos);
    CHECK(t.find("engram_sse_clients 2") != std::string::npos);
    CHECK(t.find("engram_append_seconds_bucket{le=\"0.001\"} 1") != std::string::npos);
    CHECK(t.find("engram_append_seconds_bucket{le=\"0.01\"} 2") != std::string::npos);
    CHECK(t.find("engram_append_seconds_bucket{le=\"+Inf\"} 3") != std::string::npos);
    CHECK(t.find("engram_append_seconds_count 3") != std::string::npos);
    CHECK(t.find("engram_relay_lag 7") != std::string::npos);
}

TEST_CASE("the same metric name and labels return the same counter", "[unit][metrics]") {
    Registry r;
    auto& a = r.counter("x_total", "x");
    auto& b = r.counter("x_total", "x");
    CHECK(&a == &b);
}
