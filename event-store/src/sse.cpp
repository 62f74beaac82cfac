#include "sse.h"

#include "engram/core/glob.h"
#include "engram/metrics/metrics.h"
#include "engram/store/query.h"

#include <algorithm>
#include <atomic>
#include <string>

namespace engram::event_store {
namespace {

// Live events that arrive while a subscriber is still catching up are buffered; past this many the
// buffer is dropped and the catch-up simply reads further from the log.
constexpr std::size_t kMaxCatchupBuffer = 10000;

// "ip:port" -> "ip": the per-client cap counts addresses, whatever the source ports.
std::string address_of(const std::string& remote) {
    auto colon = remote.rfind(':');
    return colon == std::string::npos ? remote : remote.substr(0, colon);
}

}  // namespace

struct SseHub::Subscriber {
    // The place taken by reserve(), given back once: when the stream leaves the hub (so that the
    // streams counted and the places taken agree at every moment), or when a stream that never
    // joined is dropped.
    SseHub* hub = nullptr;
    std::string client;
    std::atomic<bool> holds_place{false};
    void give_back_place() {
        if (holds_place.exchange(false)) hub->release(client);
    }
    ~Subscriber() { give_back_place(); }

    std::string aggregate_id;
    std::optional<std::string> type_glob;
    std::shared_ptr<http::Stream> stream;
    std::mutex mu;  // guards the fields below
    std::int64_t last_sent = 0;
    bool live = false;
    bool overflowed = false;
    std::vector<std::shared_ptr<const std::pair<std::int64_t, std::string>>> buffer;

    bool matches(const events::Event& e) const { return !type_glob || glob_match(*type_glob, e.type); }
};

SseHub::SseHub(store::Reader& reader, metrics::Registry& metrics, std::chrono::milliseconds keepalive, Limits limits)
    : reader_(reader), keepalive_(keepalive), limits_(limits) {
    metrics.gauge_fn("engram_sse_clients", "open Server-Sent Events streams", [this] { return static_cast<double>(clients()); });
    refused_global_ = &metrics.counter("engram_sse_refused_total", "event streams refused by a cap", "cap=\"max_streams\"");
    refused_client_ = &metrics.counter("engram_sse_refused_total", "event streams refused by a cap", "cap=\"per_client\"");
}

std::optional<http::Response> SseHub::reserve(const std::string& client) {
    std::lock_guard lk(places_mu_);
    if (places_ >= limits_.max_streams) {
        refused_global_->inc();
        auto r = http::Response::error(503, "too_many_streams",
                                       "the event store serves at most " + std::to_string(limits_.max_streams) +
                                           " event streams at once (EVENT_STORE_SSE_MAX_STREAMS); retry later",
                                       {{"limit", limits_.max_streams}});
        r.headers.emplace_back("Retry-After", "5");
        return r;
    }
    auto& mine = places_by_client_[client];
    if (mine >= limits_.max_per_client) {
        refused_client_->inc();
        auto r = http::Response::error(429, "too_many_client_streams",
                                       "this client (" + client + ") already has " + std::to_string(mine) +
                                           " event streams open, the most one address may hold "
                                           "(EVENT_STORE_SSE_MAX_PER_CLIENT); close one or retry later",
                                       {{"limit", limits_.max_per_client}});
        r.headers.emplace_back("Retry-After", "5");
        return r;
    }
    ++mine;
    ++places_;
    return std::nullopt;
}

void SseHub::release(const std::string& client) {
    std::lock_guard lk(places_mu_);
    if (places_ > 0) --places_;
    auto it = places_by_client_.find(client);
    if (it == places_by_client_.end()) return;
    if (--it->second == 0) places_by_client_.erase(it);
}

SseHub::~SseHub() { stop(); }

void SseHub::start() {
    thread_ = std::thread([this] { run(); });
}

void SseHub::stop() {
    {
        std::lock_guard lk(mu_);
        if (stopping_ && !thread_.joinable()) return;
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::unordered_map<std::string, std::vector<std::shared_ptr<Subscriber>>> subs;
    {
        std::lock_guard lk(mu_);
        subs.swap(by_aggregate_);
        count_ = 0;
    }
    for (auto& [_, v] : subs)
        for (auto& s : v) s->stream->close();
}

std::size_t SseHub::clients() const {
    std::lock_guard lk(mu_);
    return count_;
}

std::string SseHub::frame(const events::Event& e) {
    return "id: " + std::to_string(e.position.value()) + "\nevent: " + e.type + "\ndata: " + e.json_text() + "\n\n";
}

void SseHub::publish(const std::vector<events::Event>& evs) {
    {
        std::lock_guard lk(mu_);
        if (stopping_ || evs.empty()) return;
        if (count_ == 0) {  // nobody listens: nothing to format, but remember how far the log is
            last_seen_ = std::max(last_seen_, evs.back().position.value());
            return;
        }
        auto& light = pending_.emplace_back();
        light.reserve(evs.size());
        for (const auto& e : evs) light.push_back(e.text_copy());
    }
    cv_.notify_one();
}

void SseHub::remove(const std::shared_ptr<Subscriber>& s) {
    std::lock_guard lk(mu_);
    auto it = by_aggregate_.find(s->aggregate_id);
    if (it == by_aggregate_.end()) return;
    auto& v = it->second;
    auto before = v.size();
    v.erase(std::remove(v.begin(), v.end(), s), v.end());
    if (v.size() != before) s->give_back_place();  // before count_ drops: a reader of clients() may retry at once
    count_ -= before - v.size();
    if (v.empty()) by_aggregate_.erase(it);
}

void SseHub::run() {
    auto next_keepalive = std::chrono::steady_clock::now() + keepalive_;
    for (;;) {
        std::deque<std::vector<events::Event>> work;
        std::vector<std::shared_ptr<Subscriber>> all;
        bool ping = false;
        {
            std::unique_lock lk(mu_);
            cv_.wait_until(lk, next_keepalive, [&] { return stopping_ || !pending_.empty(); });
            if (stopping_) return;
            work.swap(pending_);
            if (std::chrono::steady_clock::now() >= next_keepalive) {
                ping = true;
                next_keepalive = std::chrono::steady_clock::now() + keepalive_;
                for (auto& [_, v] : by_aggregate_) all.insert(all.end(), v.begin(), v.end());
            }
        }
        std::vector<std::shared_ptr<Subscriber>> dead;
        for (auto& batch : work) {
            // A hole before this batch was committed by another store process: its events never
            // come through here. Live subscribers are closed so they reconnect with Last-Event-ID
            // and read the hole from the log (never skipping it).
            if (!batch.empty()) {
                std::lock_guard lk(mu_);
                if (last_seen_ > 0 && batch.front().position.value() > last_seen_ + 1)
                    for (auto& [_, v] : by_aggregate_)
                        for (auto& s : v) dead.push_back(s);
                last_seen_ = std::max(last_seen_, batch.back().position.value());
            }
            for (auto& ev : batch) {
                std::vector<std::shared_ptr<Subscriber>> subs;
                {
                    std::lock_guard lk(mu_);
                    auto it = by_aggregate_.find(ev.aggregate_id);
                    if (it == by_aggregate_.end()) continue;
                    subs = it->second;
                }
                std::shared_ptr<const std::pair<std::int64_t, std::string>> f;
                for (auto& s : subs) {
                    if (!s->matches(ev)) continue;
                    if (!f) f = std::make_shared<const std::pair<std::int64_t, std::string>>(ev.position.value(), frame(ev));
                    std::lock_guard lk(s->mu);
                    if (!s->live) {
                        if (s->buffer.size() < kMaxCatchupBuffer)
                            s->buffer.push_back(f);
                        else
                            s->overflowed = true;
                        continue;
                    }
                    if (f->first <= s->last_sent) continue;
                    if (!s->stream->write(f->second)) dead.push_back(s);
                    s->last_sent = f->first;
                }
            }
        }
        if (ping)
            for (auto& s : all) {
                std::lock_guard lk(s->mu);
                if (s->live && !s->stream->write(": keep-alive\n\n")) dead.push_back(s);
            }
        for (auto& s : dead) {
            s->stream->close();
            remove(s);
        }
    }
}

void SseHub::serve(http::Request& req, const std::shared_ptr<http::Responder>& res) {
    auto agg = req.param("aggregate_id");
    if (!agg || agg->empty())
        return res->respond(http::Response::error(400, "invalid_parameter", "query parameter 'aggregate_id' is required"));
    auto sub = std::make_shared<Subscriber>();
    sub->aggregate_id = *agg;
    if (auto t = req.param("type")) {
        if (!glob_valid(*t))
            return res->respond(http::Response::error(
                400, "invalid_parameter", "query parameter 'type' must be a type name, optionally ending with one '*'"));
        sub->type_glob = *t;
    }
    // Last-Event-ID (a reconnecting EventSource) wins over `after`.
    std::string resume = req.header("last-event-id");
    std::string resume_name = "Last-Event-ID";
    if (resume.empty()) {
        resume = req.param("after").value_or("");
        resume_name = "after";
    }
    if (!resume.empty()) {
        auto p = store::parse_count(resume);
        if (!p)
            return res->respond(
                http::Response::error(400, "invalid_parameter", resume_name + " must be a non-negative integer position"));
        sub->last_sent = *p;
    }
    auto client = address_of(req.remote);
    if (auto refused = reserve(client)) return res->respond(std::move(*refused));
    sub->hub = this;  // from here on every way out gives the place back
    sub->client = std::move(client);
    sub->holds_place = true;
    // Probe the database before committing to a 200 stream, so an outage is a clear 503.
    if (auto ping = reader_.ping(); !ping) return res->respond(http::Response::error(503, "unavailable", ping.error().detail));

    sub->stream = res->start_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
    {
        std::lock_guard lk(mu_);
        if (stopping_) return sub->stream->close();
        by_aggregate_[sub->aggregate_id].push_back(sub);  // from now on live events are buffered
        ++count_;
    }
    std::weak_ptr<Subscriber> weak = sub;
    sub->stream->on_close([this, weak] {
        if (auto s = weak.lock()) remove(s);
    });
    sub->stream->write("retry: 1000\n\n");

    // Catch up from the log, then drain what arrived meanwhile; repeat if the buffer overflowed.
    for (;;) {
        store::ReadQuery q;
        q.after = GlobalPosition(sub->last_sent);
        q.aggregate_id = sub->aggregate_id;
        q.type_glob = sub->type_glob;
        q.limit = 1000;
        auto evs = reader_.read(q);
        if (!evs) {
            sub->stream->close();
            return remove(sub);
        }
        for (const auto& e : *evs) {
            if (!sub->stream->write(frame(e))) {
                sub->stream->close();
                return remove(sub);
            }
            sub->last_sent = e.position.value();
        }
        if (evs->size() == static_cast<std::size_t>(q.limit)) continue;
        std::lock_guard lk(sub->mu);
        if (sub->overflowed) {
            sub->overflowed = false;
            sub->buffer.clear();
            continue;
        }
        for (auto& f : sub->buffer) {
            if (f->first <= sub->last_sent) continue;
            if (!sub->stream->write(f->second)) break;
            sub->last_sent = f->first;
        }
        sub->buffer.clear();
        sub->live = true;
        return;
    }
}

}  // namespace engram::event_store
