#include "engram/metrics/metrics.h"

#include <fmt/format.h>

namespace engram::metrics {

void Gauge::add(double d) {
    double cur = v_.load(std::memory_order_relaxed);
    while (!v_.compare_exchange_weak(cur, cur + d, std::memory_order_relaxed)) {}
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<std::uint64_t>[bounds_.size() + 1]) {
    for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i] = 0;
}

void Histogram::observe(double v) {
    std::size_t i = 0;
    while (i < bounds_.size() && v > bounds_[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    double cur = sum_.load(std::memory_order_relaxed);
    while (!sum_.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {}
}

static std::string with(const std::string& labels, const std::string& extra) {
    if (labels.empty()) return "{" + extra + "}";
    return "{" + labels + "," + extra + "}";
}

std::string Histogram::render(const std::string& name, const std::string& labels) const {
    std::string out;
    std::uint64_t cum = 0;
    for (std::size_t i = 0; i < bounds_.size(); ++i) {
        cum += buckets_[i].load(std::memory_order_relaxed);
        out += fmt::format("{}_bucket{} {}\n", name, with(labels, fmt::format("le=\"{}\"", bounds_[i])), cum);
    }
    cum += buckets_[bounds_.size()].load(std::memory_order_relaxed);
    out += fmt::format("{}_bucket{} {}\n", name, with(labels, "le=\"+Inf\""), cum);
    std::string l = labels.empty() ? "" : "{" + labels + "}";
    out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", name, l, sum_.load(), name, l, cum);
    return out;
}

Registry::Family& Registry::family(const std::string& name, const std::string& help, const std::string& type) {
    auto& f = f_[name];
    f.help = help;
    f.type = type;
    return f;
}

Counter& Registry::counter(const std::string& name, const std::string& help, const std::string& labels) {
    std::lock_guard lk(mu_);
    auto& slot = family(name, help, "counter").counters[labels];
    if (!slot) slot = std::make_unique<Counter>();
    return *slot;
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const std::string& labels) {
    std::lock_guard lk(mu_);
    auto& slot = family(name, help, "gauge").gauges[labels];
    if (!slot) slot = std::make_unique<Gauge>();
    return *slot;
}

Histogram& Registry::histogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                               const std::string& labels) {
    std::lock_guard lk(mu_);
    auto& slot = family(name, help, "histogram").histograms[labels];
    if (!slot) slot = std::make_unique<Histogram>(std::move(bounds));
    return *slot;
}

void Registry::gauge_fn(const std::string& name, const std::string& help, std::function<double()> fn) {
    std::lock_guard lk(mu_);
    family(name, help, "gauge").fn = std::move(fn);
}

std::string Registry::render() const {
    std::lock_guard lk(mu_);
    std::string out;
    for (const auto& [name, f] : f_) {
        out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, f.help, name, f.type);
        auto l = [](const std::string& s) { return s.empty() ? std::string() : "{" + s + "}"; };
        for (const auto& [labels, c] : f.counters) out += fmt::format("{}{} {}\n", name, l(labels), c->value());
        for (const auto& [labels, g] : f.gauges) out += fmt::format("{}{} {}\n", name, l(labels), g->value());
        for (const auto& [labels, h] : f.histograms) out += h->render(name, labels);
        if (f.fn) out += fmt::format("{} {}\n", name, f.fn());
    }
    return out;
}

std::vector<double> latency_buckets() {
    return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

}  // namespace engram::metrics
