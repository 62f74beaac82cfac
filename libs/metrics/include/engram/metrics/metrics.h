#pragma once
// Prometheus text exposition for counters, gauges and fixed-bucket histograms. Metrics are
// registered once at start and updated lock-free from any thread; render() is for GET /metrics.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace engram::metrics {

class Counter {
public:
    void inc(std::uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
    std::uint64_t value() const { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> v_{0};
};

class Gauge {
public:
    void set(double v) { v_.store(v, std::memory_order_relaxed); }
    void add(double d);
    double value() const { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<double> v_{0};
};

class Histogram {
public:
    explicit Histogram(std::vector<double> bounds);
    void observe(double v);
    std::string render(const std::string& name, const std::string& labels) const;
    std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }

private:
    std::vector<double> bounds_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;
    std::atomic<std::uint64_t> count_{0};
    std::atomic<double> sum_{0};
};

class Registry {
public:
    // labels like: result="created"
    Counter& counter(const std::string& name, const std::string& help, const std::string& labels = "");
    Gauge& gauge(const std::string& name, const std::string& help, const std::string& labels = "");
    Histogram& histogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                         const std::string& labels = "");
    // A gauge computed when scraped (e.g. relay lag, open SSE streams).
    void gauge_fn(const std::string& name, const std::string& help, std::function<double()> fn);
    std::string render() const;

private:
    struct Family {
        std::string help, type;
        std::map<std::string, std::unique_ptr<Counter>> counters;
        std::map<std::string, std::unique_ptr<Gauge>> gauges;
        std::map<std::string, std::unique_ptr<Histogram>> histograms;
        std::function<double()> fn;
    };
    Family& family(const std::string& name, const std::string& help, const std::string& type);
    mutable std::mutex mu_;
    std::map<std::string, Family> f_;
};

// Latency buckets in seconds from 0.1 ms to 10 s.
std::vector<double> latency_buckets();

}  // namespace engram::metrics
