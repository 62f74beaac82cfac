// engram::processor runtime: membership, partition claims, cursors, the per-aggregate scheduler and
// the health server. The protocol, the threads and the bounds are in README.md; the rows in
// tables.cpp and membership.cpp.
//
// Threads:
//  - coordinator: every `tick`: heartbeat, assignment, claims, renewals with checkpoints,
//                 hand-overs; the only writer of lease rows.
//  - one fetcher per owned partition: reads its cursor and queues messages per aggregate.
//  - workers (`concurrency`): take a ready aggregate, run the head of its queue to completion.
//  - poller: parked rows with retry_requested, gauges.
#include "engram/processor/processor.h"

#include "context_impl.h"
#include "membership.h"

#include "engram/config/config.h"
#include "engram/core/json.h"
#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/http/guard.h"
#include "engram/http/server.h"
#include "engram/log/log.h"
#include "engram/nats/nats.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <set>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>

namespace engram::processor {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

std::string error_text(const Error& e) { return e.detail.empty() ? e.code : e.code + ": " + e.detail; }

std::string hostname() {
    char buf[256] = {0};
    if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
    return buf;
}

// "events.<Type>.<p>" -> "<Type>"
std::string_view type_of_subject(std::string_view subject) {
    auto a = subject.find('.');
    if (a == std::string_view::npos) return {};
    auto b = subject.find('.', a + 1);
    return subject.substr(a + 1, b == std::string_view::npos ? std::string_view::npos : b - a - 1);
}

}  // namespace

// One unit of work in an aggregate's queue: a message of a claimed partition (its body loaded, or
// only its sequence when the partition holds too many bodies), or a parked event to retry.
struct Item {
    ClaimPtr claim;
    std::uint64_t seq = 0;  // 0 for a parked retry
    std::int64_t position = 0;
    std::optional<events::Event> event;  // nullopt: spilled, re-read by sequence before it runs
    bool counted = false;                // its body counts against the partition's and aggregate's caps
    bool parked = false;
    int parked_attempts = 0;
};
using ItemPtr = std::shared_ptr<Item>;

struct AggQueue {
    std::deque<ItemPtr> items;
    std::size_t loaded = 0;
    std::size_t unbatched = 0;  // after a failed batch: this many items go one by one
    bool active = false;        // a worker owns it
    bool in_ready = false;      // listed in `ready`
};

struct Runtime::Impl {
    Options opts;
    Handler handler;
    BatchHandler batch_handler;
    std::shared_ptr<spdlog::logger> log;
    std::string labels;
    std::string member = Uuid::v4().str();
    std::string host = hostname();

    metrics::Registry registry;
    metrics::Counter* handled = nullptr;
    metrics::Counter* failed_attempts = nullptr;
    metrics::Counter* transient_failures = nullptr;
    metrics::Counter* parked_total = nullptr;
    metrics::Counter* parked_retried_ok = nullptr;
    metrics::Counter* skipped = nullptr;
    metrics::Counter* undecodable = nullptr;
    metrics::Counter* claims_total = nullptr;
    metrics::Counter* handovers_total = nullptr;
    metrics::Counter* lost_total = nullptr;
    metrics::Counter* fenced_total = nullptr;
    metrics::Counter* cursor_reopens = nullptr;
    metrics::Counter* batched_total = nullptr;
    metrics::Gauge* parked_rows = nullptr;
    metrics::Gauge* lag = nullptr;
    metrics::Gauge* in_flight = nullptr;
    metrics::Gauge* buffered_g = nullptr;
    metrics::Gauge* retrying_g = nullptr;
    metrics::Gauge* owned_g = nullptr;
    metrics::Gauge* members_g = nullptr;
    metrics::Histogram* latency = nullptr;
    std::vector<metrics::Gauge*> part_lag, part_checkpoint, part_owned;

    std::unique_ptr<pg::Pool> pool;
    std::unique_ptr<nats::Connection> nc;
    std::unique_ptr<Membership> membership;
    std::unique_ptr<http::Server> server;
    http::Guard guard;
    std::set<std::string> type_filter;  // empty = all
    std::string filter_type = "*";      // the subject token of the cursors' filter

    // Work state, under mu.
    std::mutex mu;
    std::condition_variable work_cv;  // workers: an aggregate became ready / stopping
    std::condition_variable stop_cv;  // sleeps wake on stop
    std::condition_variable idle_cv;  // a handler finished
    std::map<int, ClaimPtr> claims;   // owned partitions
    std::unordered_map<std::string, AggQueue> queues;
    std::deque<std::string> ready;
    std::unordered_set<std::string> parked_in_queue;
    int running_handlers = 0;
    int retrying = 0;                    // events failing transiently right now
    Clock::time_point retrying_since{};  // when `retrying` last went from 0 to 1
    std::string last_transient_error;
    std::vector<std::string> live_members;
    bool stopping = false;
    bool started = false;

    std::thread coordinator_thread, poll_thread;
    std::vector<std::thread> workers;

    // ---------------------------------------------------------------------------------------
    void init_metrics() {
        labels = "processor=\"" + opts.name + "\"";
        auto c = [&](const char* n, const char* h) { return &registry.counter(n, h, labels); };
        auto g = [&](const char* n, const char* h) { return &registry.gauge(n, h, labels); };
        handled = c("processor_events_handled_total", "events handled successfully (incl. parked retries)");
        failed_attempts = c("processor_handler_failures_total", "handler attempts that returned an error");
        transient_failures = c("processor_transient_failures_total",
                               "handler attempts that failed on an unavailable dependency (retried without limit)");
        parked_total = c("processor_events_parked_total", "events parked by this process");
        parked_retried_ok = c("processor_parked_retried_total", "parked events that succeeded on a requested retry");
        skipped = c("processor_events_skipped_total", "messages of types this processor does not handle");
        undecodable = c("processor_events_undecodable_total", "messages whose body is not an event envelope (skipped)");
        claims_total = c("processor_partition_claims_total", "partitions claimed by this process");
        handovers_total = c("processor_partition_handovers_total", "partitions released by this process (rebalance, stop)");
        lost_total = c("processor_partition_lost_total", "partitions whose lease this process lost (taken over after expiry)");
        fenced_total = c("processor_fenced_total", "effects refused because the partition's lease was lost");
        cursor_reopens = c("processor_cursor_reopens_total", "partition cursors reopened after a gap or a lost consumer");
        batched_total = c("processor_events_batched_total", "events handled in batches (counted in handled_total too)");
        parked_rows = g("processor_parked_events", "rows in processor_parked for this processor");
        lag = g("processor_consumer_lag", "messages of owned partitions not yet fetched");
        in_flight = g("processor_in_flight", "handlers running now");
        buffered_g = g("processor_buffered_events", "messages fetched and not yet done");
        retrying_g = g("processor_retrying_events", "events failing on an unavailable dependency right now (retried)");
        owned_g = g("processor_partitions_owned", "partitions this process owns");
        members_g = g("processor_members", "live instances of this processor");
        latency =
            &registry.histogram("processor_handler_seconds", "handler latency per attempt", metrics::latency_buckets(), labels);
    }

    void init_partition_metrics() {
        for (int p = 0; p < opts.partitions; ++p) {
            auto l = labels + ",partition=\"" + std::to_string(p) + "\"";
            part_lag.push_back(
                &registry.gauge("processor_partition_lag", "messages of the partition after what was fetched (owner only)", l));
            part_checkpoint.push_back(
                &registry.gauge("processor_partition_checkpoint", "stream sequence at or below which the partition is done", l));
            part_owned.push_back(&registry.gauge("processor_partition_owned", "1 when this process owns the partition", l));
        }
    }

    bool sleep_unless_stopping(std::chrono::milliseconds d) {
        std::unique_lock lk(mu);
        return !stop_cv.wait_for(lk, d, [&] { return stopping; });
    }

    // ---------------------------------------------------------------------------------------
    // Claims

    void start_claim(int partition, const Claimed& c) {
        auto claim = std::make_shared<Claim>();
        claim->partition = partition;
        claim->epoch = c.epoch;
        claim->checkpoint_seq = c.checkpoint;
        claim->committed_seq = c.checkpoint;
        claim->accepted_seq = c.checkpoint;
        claim->renewed(Clock::now(), opts.lease_ttl);
        {
            std::lock_guard lk(mu);
            claims[partition] = claim;
            owned_g->set(static_cast<double>(claims.size()));
        }
        part_owned[partition]->set(1);
        claims_total->inc();
        claim->fetcher = std::thread([this, claim] { fetch_loop(claim); });
        log->info("partition {} claimed (epoch {}, from stream sequence {})", partition, c.epoch, c.checkpoint + 1);
    }

    // Stops the claim's fetcher and forgets its queued work. Called with the lease released or lost;
    // handlers still running see Context::owns() false and their fenced commits fail.
    void drop_claim(const ClaimPtr& claim) {
        claim->lost.store(true);
        claim->releasing.store(true);
        claim->cv.notify_all();
        if (claim->fetcher.joinable() && claim->fetcher.get_id() != std::this_thread::get_id()) claim->fetcher.join();
        std::lock_guard lk(mu);
        for (const auto& agg : claim->aggregates) {
            auto it = queues.find(agg);
            if (it == queues.end()) continue;
            auto& q = it->second;
            // Items of this claim that are not running are dropped; the running head (if any) is
            // popped by its worker.
            std::deque<ItemPtr> keep;
            for (std::size_t i = 0; i < q.items.size(); ++i) {
                auto& item = q.items[i];
                if (item->claim == claim && !(q.active && i == 0)) {
                    if (item->counted) --q.loaded;
                    if (item->parked && item->event) parked_in_queue.erase(item->event->id.str());
                    continue;
                }
                keep.push_back(item);
            }
            q.items.swap(keep);
            if (q.items.empty() && !q.active) queues.erase(it);
        }
        claim->aggregates.clear();
        if (claims.count(claim->partition) && claims[claim->partition] == claim) claims.erase(claim->partition);
        owned_g->set(static_cast<double>(claims.size()));
        part_owned[claim->partition]->set(0);
        part_lag[claim->partition]->set(0);
        recount_buffered_locked();
        idle_cv.notify_all();
    }

    void recount_buffered_locked() {
        std::size_t n = 0;
        std::uint64_t pending = 0;
        for (auto& [p, c] : claims) {
            n += c->unfinished.size();
            pending += c->pending;
        }
        buffered_g->set(static_cast<double>(n));
        lag->set(static_cast<double>(pending));
    }

    // Low-water mark: every message of the partition at or below it is done.
    static std::pair<std::uint64_t, std::int64_t> low_water_locked(const Claim& c) {
        if (c.unfinished.empty()) return {c.accepted_seq, c.accepted_position};
        auto first = c.unfinished.begin();
        return {first->first - 1, std::max<std::int64_t>(first->second - 1, 0)};
    }

    // ---------------------------------------------------------------------------------------
    // Coordinator

    void coordinator_loop() {
        auto last_error_log = Clock::now() - std::chrono::hours(1);
        while (true) {
            auto t0 = Clock::now();
            auto s = coordinate(t0);
            if (!s && Clock::now() - last_error_log > std::chrono::seconds(10)) {
                log->warn(
                    "coordination failed: {} (retrying every {} ms; owned partitions are fenced once their lease "
                    "runs out)",
                    error_text(s.error()), opts.tick.count());
                last_error_log = Clock::now();
            }
            if (!sleep_unless_stopping(opts.tick)) return;
        }
    }

    Status coordinate(Clock::time_point t0) {
        // 1. Renew what we hold (with its checkpoint); find out what we lost.
        std::vector<ClaimPtr> held;
        {
            std::lock_guard lk(mu);
            for (auto& [p, c] : claims) held.push_back(c);
        }
        std::vector<ClaimPtr> lost;
        for (auto& c : held) {
            if (c->lost.load()) continue;
            std::uint64_t seq;
            std::int64_t pos;
            std::uint64_t pending;
            {
                std::lock_guard lk(mu);
                std::tie(seq, pos) = low_water_locked(*c);
                pending = c->pending + (c->unfinished.size());
            }
            auto r = membership->renew(c->partition, c->epoch, seq, pos, pending);
            if (!r) return std::move(r).error();
            if (!*r) {
                log->warn("partition {} lost: its lease (epoch {}) expired (and may have been taken over)", c->partition,
                          c->epoch);
                lost_total->inc();
                c->lost.store(true);
                c->releasing.store(true);
                c->cv.notify_all();
                lost.push_back(c);
                continue;
            }
            c->renewed(t0, opts.lease_ttl);
            c->committed_seq = std::max(c->committed_seq, seq);
            part_checkpoint[c->partition]->set(static_cast<double>(seq));
        }
        // Their fetchers stop together, not one fetch timeout after another.
        for (auto& c : lost) drop_claim(c);
        // 2. Membership and the assignment it implies.
        auto members = membership->heartbeat(host, static_cast<int>(::getpid()), listen_address());
        if (!members) return std::move(members).error();
        {
            std::lock_guard lk(mu);
            live_members = *members;
        }
        members_g->set(static_cast<double>(members->size()));
        if (std::find(members->begin(), members->end(), member) == members->end()) members->push_back(member);
        auto desired = assign(*members, opts.partitions);

        // 3. Hand over what is no longer ours once its running handlers are done: every fetcher is
        //    told first, so they stop together.
        for (auto& c : held) {
            if (c->lost.load()) continue;
            bool ours = desired[static_cast<std::size_t>(c->partition)] == member;
            if (!ours && !c->releasing.load()) {
                log->info("partition {} moves to {}: handing it over after its running handlers", c->partition,
                          desired[static_cast<std::size_t>(c->partition)].substr(0, 8));
                c->releasing.store(true);
                c->release_deadline = Clock::now() + opts.drain_timeout;
                c->cv.notify_all();
            }
        }
        for (auto& c : held)
            if (!c->lost.load() && c->releasing.load()) try_release(c, false);

        // 4. Claim what is ours and free.
        std::set<int> mine;
        {
            std::lock_guard lk(mu);
            for (auto& [p, c] : claims) mine.insert(p);
        }
        bool wants = false;
        for (int p = 0; p < opts.partitions; ++p)
            if (desired[static_cast<std::size_t>(p)] == member && !mine.count(p)) wants = true;
        if (!wants) return ok();
        auto rows = membership->leases();
        if (!rows) return std::move(rows).error();
        std::map<int, LeaseRow> by_partition;
        for (auto& r : *rows) by_partition[r.partition] = r;
        std::optional<Error> first_error;
        for (int p = 0; p < opts.partitions; ++p) {
            if (desired[static_cast<std::size_t>(p)] != member || mine.count(p)) continue;
            if (is_stopping()) return ok();
            auto it = by_partition.find(p);
            if (it != by_partition.end() && it->second.live && it->second.owner != member) continue;  // its owner hands it over
            auto claimed = membership->claim(p);
            if (!claimed) {
                // One partition whose row is locked (its old owner froze inside a fenced
                // transaction) must not keep the others from being claimed.
                if (!first_error) first_error = std::move(claimed).error();
                continue;
            }
            if (*claimed) start_claim(p, **claimed);
        }
        if (first_error) return std::move(*first_error);
        return ok();
    }

    // Releases a claim being handed over once no handler of it runs (or the drain time is up:
    // a handler that ignores its deadline does not hold the partition).
    bool try_release(const ClaimPtr& c, bool force) {
        {
            std::lock_guard lk(mu);
            if (c->running > 0 && !force && Clock::now() < c->release_deadline) return false;
            if (c->running > 0)
                log->warn(
                    "partition {}: {} handler(s) still running after the drain time; released anyway (their effects are "
                    "fenced)",
                    c->partition, c->running);
        }
        c->releasing.store(true);
        c->cv.notify_all();
        if (c->fetcher.joinable()) c->fetcher.join();
        std::uint64_t seq;
        std::int64_t pos;
        {
            std::lock_guard lk(mu);
            std::tie(seq, pos) = low_water_locked(*c);
        }
        c->lost.store(true);  // before the row changes hands: nothing of ours commits after it
        auto r = membership->release(c->partition, c->epoch, seq, pos);
        if (!r) log->warn("partition {}: release failed ({}); the lease expires instead", c->partition, error_text(r.error()));
        handovers_total->inc();
        log->info("partition {} handed over at stream sequence {}", c->partition, seq);
        drop_claim(c);
        return true;
    }

    std::string listen_address() const {
        auto hp = config::parse_listen(opts.listen);
        return hp && server ? hp->host + ":" + std::to_string(server->port()) : opts.listen;
    }

    // ---------------------------------------------------------------------------------------
    // Fetchers

    void fetch_loop(const ClaimPtr& claim) {
        auto last_error_log = Clock::now() - std::chrono::hours(1);
        std::unique_ptr<nats::Cursor> cursor;
        auto last_check = Clock::now();
        auto filter = "events." + filter_type + "." + std::to_string(claim->partition);
        while (!claim->releasing.load() && !is_stopping()) {
            {
                std::unique_lock lk(mu);
                claim->cv.wait_for(lk, std::chrono::milliseconds(500), [&] {
                    return stopping || claim->releasing.load() || claim->unfinished.size() < opts.max_unfinished_per_partition;
                });
                if (stopping || claim->releasing.load()) break;
                if (claim->unfinished.size() >= opts.max_unfinished_per_partition) continue;
            }
            if (!cursor) {
                nats::CursorOptions co;
                co.stream = opts.stream;
                co.filter = filter;
                {
                    std::lock_guard lk(mu);
                    co.start_seq = claim->accepted_seq + 1;
                }
                auto c = nats::Cursor::open(*nc, co);
                if (!c) {
                    if (c.error().code == "cursor_config") {
                        log->critical("{}", c.error().detail);
                    }
                    if (Clock::now() - last_error_log > std::chrono::seconds(10)) {
                        log->warn("partition {}: cannot open its cursor: {} (retrying)", claim->partition, error_text(c.error()));
                        last_error_log = Clock::now();
                    }
                    wait_on_claim(claim, std::chrono::milliseconds(500));
                    continue;
                }
                cursor = std::move(*c);
            }
            auto r = cursor->fetch(64, std::chrono::milliseconds(500));
            if (!r) {
                if (Clock::now() - last_error_log > std::chrono::seconds(10)) {
                    log->warn("partition {}: fetch failed: {} (reopening the cursor)", claim->partition, error_text(r.error()));
                    last_error_log = Clock::now();
                }
                cursor.reset();
                cursor_reopens->inc();
                wait_on_claim(claim, std::chrono::milliseconds(200));
                continue;
            }
            if (r->empty()) {
                // Nothing new for a while: make sure the consumer still exists and answers (a NATS
                // restart drops it silently; a cluster node that died takes the consumers placed on
                // it along; a fetch from either only times out). Any doubt: reopen, which places a
                // new consumer on a live server at the next unseen sequence, so nothing is skipped.
                if (Clock::now() - last_check > std::chrono::seconds(2)) {
                    last_check = Clock::now();
                    if (auto st = cursor->check(); !st) {
                        log->info("partition {}: {}", claim->partition, error_text(st.error()));
                        cursor.reset();
                        cursor_reopens->inc();
                        continue;
                    }
                }
            } else {
                last_check = Clock::now();
            }
            for (auto& m : *r) accept(claim, std::move(m));
            {
                std::lock_guard lk(mu);
                claim->pending = cursor->pending();
                part_lag[claim->partition]->set(static_cast<double>(claim->pending));
            }
        }
    }

    void wait_on_claim(const ClaimPtr& claim, std::chrono::milliseconds d) {
        std::unique_lock lk(mu);
        claim->cv.wait_for(lk, d, [&] { return stopping || claim->releasing.load(); });
    }

    void accept(const ClaimPtr& claim, nats::Message m) {
        auto seq = m.stream_seq;
        auto type = type_of_subject(m.subject);
        if (!type_filter.empty() && !type_filter.count(std::string(type))) {
            skipped->inc();
            std::lock_guard lk(mu);
            mark_accepted_locked(*claim, seq, 0);
            return;
        }
        auto body = parse_json(m.data, "the message");
        auto ev = body ? events::Event::from_json(*body) : Result<events::Event>(std::move(body).error());
        if (!ev || events::partition_of(ev->aggregate_id, opts.partitions) != claim->partition) {
            // Not an envelope of this partition: never handled, never blocking the others.
            undecodable->inc();
            log->error("message seq {} on {} is not an event envelope of partition {} ({}): skipped", seq, m.subject,
                       claim->partition, ev ? "wrong partition" : error_text(ev.error()));
            std::lock_guard lk(mu);
            mark_accepted_locked(*claim, seq, 0);
            return;
        }
        auto item = std::make_shared<Item>();
        item->claim = claim;
        item->seq = seq;
        item->position = ev->position.value();
        auto agg = ev->aggregate_id;
        std::lock_guard lk(mu);
        if (claim->lost.load() || claim->releasing.load()) return;
        mark_accepted_locked(*claim, seq, item->position);
        claim->unfinished.emplace(seq, item->position);
        auto& q = queues[agg];
        if (claim->loaded < opts.max_loaded_per_partition && q.loaded < opts.max_loaded_per_aggregate) {
            item->event = std::move(*ev);
            item->counted = true;
            ++claim->loaded;
            ++q.loaded;
        }
        claim->aggregates.insert(agg);
        q.items.push_back(item);
        make_ready_locked(agg, q);
        recount_buffered_locked();
    }

    static void mark_accepted_locked(Claim& c, std::uint64_t seq, std::int64_t position) {
        c.accepted_seq = std::max(c.accepted_seq, seq);
        if (position) c.accepted_position = std::max(c.accepted_position, position);
    }

    // Takes a finished item off the front of its aggregate's queue, and out of the loaded counts
    // when its body was held. False when it is not at the front (the queue was reset meanwhile).
    static bool pop_front_locked(AggQueue& q, const ItemPtr& item) {
        if (q.items.empty() || q.items.front() != item) return false;
        q.items.pop_front();
        if (item->counted) {
            --q.loaded;
            --item->claim->loaded;
        }
        return true;
    }

    void make_ready_locked(const std::string& agg, AggQueue& q) {
        if (q.active || q.in_ready || q.items.empty()) return;
        q.in_ready = true;
        ready.push_back(agg);
        work_cv.notify_one();
    }

    // ---------------------------------------------------------------------------------------
    // Workers

    void worker_loop() {
        http::ClientOptions copts;
        copts.timeout = std::chrono::milliseconds(15000);
        if (!opts.api_token.empty()) copts.default_headers.emplace_back("Authorization", "Bearer " + opts.api_token);
        http::Client client(opts.event_store_url, copts);
        std::vector<ItemPtr> batch;
        while (true) {
            std::string agg;
            ItemPtr item;
            {
                std::unique_lock lk(mu);
                work_cv.wait(lk, [&] { return stopping || !ready.empty(); });
                if (stopping) return;
                agg = std::move(ready.front());
                ready.pop_front();
                auto it = queues.find(agg);
                if (it == queues.end()) continue;
                auto& q = it->second;
                q.in_ready = false;
                if (q.active || q.items.empty()) continue;
                item = q.items.front();
                if (item->claim->releasing.load() || item->claim->lost.load()) continue;  // dropped with its claim
                q.active = true;
                ++item->claim->running;
                batch.clear();
                if (batch_handler && opts.max_batch > 1 && q.unbatched == 0 && !item->parked) {
                    for (const auto& it : q.items) {
                        if (batch.size() >= opts.max_batch || it->parked || it->claim != item->claim) break;
                        batch.push_back(it);
                    }
                }
                if (batch.size() < 2) batch.clear();
                if (q.unbatched > 0) --q.unbatched;
            }
            // Bodies not kept in memory (a backlog beyond the per-aggregate cap) are re-read here, so
            // a backlog is handled in batches too.
            for (std::size_t i = 0; i < batch.size(); ++i) {
                if (batch[i]->event) continue;
                if (!load(*batch[i])) {
                    batch.resize(i);
                    break;
                }
            }
            if (batch.size() < 2) batch.clear();
            if (!batch.empty()) {
                auto outcome = run_batch(batch, client);
                std::lock_guard lk(mu);
                --item->claim->running;
                auto it = queues.find(agg);
                if (it != queues.end()) {
                    auto& q = it->second;
                    q.active = false;
                    if (outcome == Outcome::ok) {
                        for (const auto& b : batch) {
                            if (!pop_front_locked(q, b)) break;
                            b->claim->unfinished.erase(b->seq);
                        }
                    } else if (outcome == Outcome::failed) {
                        q.unbatched = batch.size();  // one by one, with retries and parking per event
                    }
                    if (q.items.empty())
                        queues.erase(it);
                    else
                        make_ready_locked(agg, q);
                }
                recount_buffered_locked();
                item->claim->cv.notify_all();
                idle_cv.notify_all();
                continue;
            }
            bool done = process(*item, client);
            {
                std::lock_guard lk(mu);
                --item->claim->running;
                auto it = queues.find(agg);
                if (it != queues.end()) {
                    auto& q = it->second;
                    q.active = false;
                    pop_front_locked(q, item);
                    if (item->parked && item->event) parked_in_queue.erase(item->event->id.str());
                    if (done && item->seq) item->claim->unfinished.erase(item->seq);
                    // Not done: the claim went away or the runtime stops; the sequence stays
                    // unfinished, so the checkpoint stays below it and the next owner redoes it.
                    if (q.items.empty())
                        queues.erase(it);
                    else
                        make_ready_locked(agg, q);  // behind the other ready aggregates: fairness
                }
                recount_buffered_locked();
                item->claim->cv.notify_all();
                idle_cv.notify_all();
            }
        }
    }

    // Loads a spilled item's body from the stream (one request); retried while NATS is away.
    bool load(Item& it) {
        while (!it.claim->lost.load() && !it.claim->releasing.load() && !is_stopping()) {
            auto m = nc->get_stream_message(opts.stream, it.seq);
            if (m) {
                auto body = parse_json(m->data, "the message");
                auto ev = body ? events::Event::from_json(*body) : Result<events::Event>(std::move(body).error());
                if (ev) {
                    it.event = std::move(*ev);
                    return true;
                }
                log->error("message seq {} cannot be decoded on re-read: {}", it.seq, error_text(ev.error()));
                return false;
            }
            if (m.error().code == "not_found") {
                log->error("message seq {} of partition {} is no longer in the stream: skipped", it.seq, it.claim->partition);
                return false;
            }
            sleep_unless_stopping(std::chrono::milliseconds(500));
        }
        return false;
    }

    bool is_stopping() {
        std::lock_guard lk(mu);
        return stopping;
    }

    std::chrono::milliseconds backoff_for(int attempt) const {
        auto d = opts.retry_backoff;
        for (int i = 1; i < attempt && d < opts.max_backoff; ++i) d *= 2;
        return std::min(d, opts.max_backoff);
    }

    // Sleeps unless stopping or the claim goes away; false when the work must be abandoned.
    bool wait_retry(const Claim& c, std::chrono::milliseconds d) {
        auto until = Clock::now() + d;
        while (Clock::now() < until) {
            if (c.lost.load() || c.releasing.load()) return false;
            if (!sleep_unless_stopping(std::min<std::chrono::milliseconds>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()), std::chrono::milliseconds(100))))
                return false;
        }
        return !c.lost.load() && !c.releasing.load();
    }

    enum class Outcome { ok, failed, abandoned };

    // What every Context of an event of `claim` shares.
    Context::Impl context_for(const Claim& claim, http::Client* client, Clock::time_point deadline) {
        Context::Impl ci;
        ci.claim = &claim;
        ci.client = client;
        ci.processor = &opts.name;
        ci.member = &member;
        ci.deadline = deadline;
        ci.stopping = [this] { return is_stopping(); };
        ci.pool = pool.get();
        ci.fenced = fenced_total;
        ci.lease_ttl_ms = opts.lease_ttl.count();
        return ci;
    }

    // Runs a handler call counted in in_flight and timed; an exception is an Error. nullopt: not
    // started because the runtime stops.
    std::optional<Status> invoke(const std::function<Status()>& call) {
        {
            std::lock_guard lk(mu);
            if (stopping) return std::nullopt;
            ++running_handlers;
            in_flight->set(running_handlers);
        }
        auto t0 = Clock::now();
        Status s = ok();
        try {
            s = call();
        } catch (const std::exception& e) {
            s = Error::make("exception", e.what());
        } catch (...) {
            s = Error::make("exception", "unknown exception");
        }
        latency->observe(std::chrono::duration<double>(Clock::now() - t0).count());
        {
            std::lock_guard lk(mu);
            --running_handlers;
            in_flight->set(running_handlers);
            idle_cv.notify_all();
        }
        return s;
    }

    Outcome run_handler(Item& it, int attempt, http::Client& client, Error* err) {
        auto ci = context_for(*it.claim, &client, Clock::now() + opts.handler_timeout);
        ci.event = &*it.event;
        ci.attempt = attempt;
        ci.parked = it.parked;
        Context ctx(&ci);
        auto s = invoke([&] { return handler(ctx); });
        if (!s) return Outcome::abandoned;
        if (*s) return Outcome::ok;
        *err = s->error();
        // The claim went away or the runtime stops: whoever owns the partition next redoes it.
        if (it.claim->lost.load() || it.claim->releasing.load() || is_stopping()) return Outcome::abandoned;
        failed_attempts->inc();
        return Outcome::failed;
    }

    // One BatchHandler call over consecutive loaded events of one aggregate (attempt 1 each).
    Outcome run_batch(const std::vector<ItemPtr>& items, http::Client& client) {
        std::vector<Context::Impl> impls;
        std::vector<Context> ctxs;
        std::vector<Context*> ptrs;
        impls.reserve(items.size());
        ctxs.reserve(items.size());
        auto deadline = Clock::now() + opts.handler_timeout;
        for (const auto& item : items) {
            impls.push_back(context_for(*item->claim, &client, deadline));
            impls.back().event = &*item->event;
            ctxs.emplace_back(&impls.back());
            ptrs.push_back(&ctxs.back());
        }
        auto s = invoke([&] { return batch_handler(ptrs); });
        if (!s) return Outcome::abandoned;
        if (*s) {
            handled->inc(items.size());
            batched_total->inc(items.size());
            return Outcome::ok;
        }
        const auto& error = s->error();
        const auto& claim = *items.front()->claim;
        if (claim.lost.load() || claim.releasing.load() || is_stopping()) return Outcome::abandoned;
        log->debug("batch of {} events of {} failed ({}): handling them one by one", items.size(),
                   items.front()->event->aggregate_id, error_text(error));
        return Outcome::failed;
    }

    void set_retrying(int delta, const std::string& error) {
        std::lock_guard lk(mu);
        if (retrying == 0 && delta > 0) retrying_since = Clock::now();
        retrying += delta;
        if (!error.empty()) last_transient_error = error;
        retrying_g->set(retrying);
    }

    // True when the item is finished (handled, parked or skipped): its sequence is done.
    bool process(Item& it, http::Client& client) {
        if (!it.event && !load(it)) return !it.claim->lost.load() && !it.claim->releasing.load() && !is_stopping();
        if (it.parked) return process_parked_retry(it, client);
        const auto& ev = *it.event;
        std::string last_error;
        int deterministic = 0;
        bool counted_retrying = false;
        auto last_log = Clock::now() - std::chrono::hours(1);
        int transient_round = 0;
        for (int attempt = 1;; ++attempt) {
            Error err;
            auto outcome = run_handler(it, attempt, client, &err);
            if (outcome == Outcome::ok) {
                if (counted_retrying) {
                    set_retrying(-1, "");
                    log->info("event {} ({} of {}) handled after {} attempts", ev.id.str(), ev.type, ev.aggregate_id, attempt);
                }
                handled->inc();
                return true;
            }
            if (outcome == Outcome::abandoned) {
                if (counted_retrying) set_retrying(-1, "");
                return false;
            }
            last_error = error_text(err);
            std::chrono::milliseconds wait;
            // "fenced" while the claim still looks held here: the lease is lost (the coordinator
            // finds out at its next renewal) or another instance raced this event; retried like an
            // outage, it ends either way.
            if (is_transient(err) || err.code == "fenced") {
                transient_failures->inc();
                if (!counted_retrying) {
                    counted_retrying = true;
                    set_retrying(1, last_error);
                } else {
                    set_retrying(0, last_error);
                }
                wait = backoff_for(++transient_round);
                if (Clock::now() - last_log > std::chrono::seconds(10)) {
                    log->warn("event {} ({} of {}): dependency unavailable, attempt {}: {} (retrying without limit)", ev.id.str(),
                              ev.type, ev.aggregate_id, attempt, last_error);
                    last_log = Clock::now();
                }
            } else {
                ++deterministic;
                log->warn("handler failed for event {} ({} of {}), attempt {}/{}: {}", ev.id.str(), ev.type, ev.aggregate_id,
                          deterministic, opts.max_attempts, last_error);
                if (deterministic >= opts.max_attempts) break;
                wait = backoff_for(deterministic);
            }
            if (!wait_retry(*it.claim, wait)) {
                if (counted_retrying) set_retrying(-1, "");
                return false;
            }
        }
        if (counted_retrying) set_retrying(-1, "");
        log->error("event {} ({} of {}) parked after {} attempts: {}", ev.id.str(), ev.type, ev.aggregate_id, opts.max_attempts,
                   last_error);
        return park(it, last_error, opts.max_attempts);
    }

    // Writes the parked row (fenced); retried while the database is unreachable. False when the
    // claim went away or the runtime stops first (the event stays unfinished: the next owner redoes it).
    bool park(const Item& it, const std::string& error, int attempts) {
        const auto& ev = *it.event;
        auto env = ev.to_json().dump();
        for (int round = 0;; ++round) {
            try {
                auto r = pool->run([&](pqxx::connection& c) -> Status {
                    pqxx::work tx(c);
                    if (auto f = fence_tx(*it.claim, tx); !f) return f;
                    tx.exec_params(
                        "INSERT INTO processor_parked (processor, event_id, position, aggregate_id, type, envelope, error, "
                        "attempts) VALUES ($1, $2::uuid, $3, $4, $5, $6::jsonb, $7, $8) "
                        "ON CONFLICT (processor, event_id) DO UPDATE SET error = EXCLUDED.error, "
                        "attempts = processor_parked.attempts + EXCLUDED.attempts, parked_at = now(), retry_requested = false",
                        opts.name, ev.id.str(), ev.position.value(), ev.aggregate_id, ev.type, env, error, attempts);
                    tx.commit();
                    return ok();
                });
                if (r && *r) {
                    parked_total->inc();
                    parked_rows->add(1);
                    return true;
                }
                auto e = r ? r->error() : r.error();
                if (e.code == "fenced") return false;
                log->warn("cannot park event {}: {} (retrying)", ev.id.str(), error_text(e));
            } catch (const std::exception& e) {
                log->error("cannot park event {}: {} (retrying)", ev.id.str(), e.what());
            }
            if (!wait_retry(*it.claim, backoff_for(std::min(round + 1, 10)))) return false;
        }
    }

    bool process_parked_retry(Item& it, http::Client& client) {
        const auto& ev = *it.event;
        Error err;
        auto outcome = run_handler(it, it.parked_attempts + 1, client, &err);
        if (outcome == Outcome::abandoned) return false;  // the row keeps retry_requested
        bool success = outcome == Outcome::ok;
        try {
            auto r = pool->run([&](pqxx::connection& c) -> Status {
                pqxx::work tx(c);
                if (auto f = fence_tx(*it.claim, tx); !f) return f;
                if (success)
                    tx.exec_params("DELETE FROM processor_parked WHERE processor = $1 AND event_id = $2::uuid", opts.name,
                                   ev.id.str());
                else
                    tx.exec_params(
                        "UPDATE processor_parked SET error = $3, attempts = attempts + 1, retry_requested = false "
                        "WHERE processor = $1 AND event_id = $2::uuid",
                        opts.name, ev.id.str(), error_text(err));
                tx.commit();
                return ok();
            });
            if (!r || !*r) log->warn("cannot update parked event {}: {}", ev.id.str(), error_text(r ? r->error() : r.error()));
        } catch (const std::exception& e) {
            log->error("cannot update parked event {}: {}", ev.id.str(), e.what());
        }
        if (success) {
            parked_retried_ok->inc();
            handled->inc();
            parked_rows->add(-1);
            log->info("parked event {} ({} of {}) handled on retry", ev.id.str(), ev.type, ev.aggregate_id);
        } else {
            log->warn("retry of parked event {} failed: {}", ev.id.str(), error_text(err));
        }
        return true;
    }

    Status fence_tx(const Claim& c, pqxx::transaction_base& tx) { return context_for(c, nullptr, Clock::now()).fence(tx); }

    // ---------------------------------------------------------------------------------------
    void poll_loop() {
        do {
            poll_parked();
        } while (sleep_unless_stopping(opts.parked_poll));
    }

    void poll_parked() {
        try {
            auto r = pool->run([&](pqxx::connection& c) {
                pqxx::work tx(c);
                auto count = tx.exec_params("SELECT count(*) FROM processor_parked WHERE processor = $1", opts.name);
                parked_rows->set(count[0][0].as<double>());
                auto rows = tx.exec_params(
                    "SELECT envelope::text, attempts FROM processor_parked WHERE processor = $1 AND retry_requested "
                    "ORDER BY position",
                    opts.name);
                std::vector<std::pair<std::string, int>> out;
                for (const auto& row : rows) out.emplace_back(row[0].as<std::string>(), row[1].as<int>());
                tx.commit();
                return out;
            });
            if (!r) return;
            for (auto& [env, attempts] : *r) {
                // Our own row (jsonb text, which prints numbers without exponents): not parse_json.
                auto ev = events::Event::from_json(json::parse(env, nullptr, false));
                if (!ev) {
                    log->error("parked envelope cannot be decoded: {}", error_text(ev.error()));
                    continue;
                }
                int p = events::partition_of(ev->aggregate_id, opts.partitions);
                std::lock_guard lk(mu);
                if (stopping) return;
                auto cl = claims.find(p);
                if (cl == claims.end() || cl->second->releasing.load()) continue;  // its owner retries it
                if (!parked_in_queue.insert(ev->id.str()).second) continue;        // already queued
                auto item = std::make_shared<Item>();
                item->claim = cl->second;
                item->parked = true;
                item->parked_attempts = attempts;
                auto agg = ev->aggregate_id;
                item->event = std::move(*ev);
                auto& q = queues[agg];
                cl->second->aggregates.insert(agg);
                q.items.push_back(item);
                make_ready_locked(agg, q);
            }
        } catch (const std::exception& e) {
            log->warn("parked poll failed: {}", e.what());
        }
    }

    // ---------------------------------------------------------------------------------------
    json status_json() {
        std::lock_guard lk(mu);
        json parts = json::array();
        for (auto& [p, c] : claims) {
            auto [seq, pos] = low_water_locked(*c);
            parts.push_back({{"partition", p},
                             {"epoch", c->epoch},
                             {"checkpoint", seq},
                             {"position", pos},
                             {"buffered", c->unfinished.size()},
                             {"pending", c->pending},
                             {"releasing", c->releasing.load()}});
        }
        json retry = {{"events", retrying}};
        if (retrying > 0) {
            retry["for_seconds"] = std::chrono::duration<double>(Clock::now() - retrying_since).count();
            retry["last_error"] = last_transient_error;
        }
        return {{"member", member}, {"members", live_members.size()}, {"partitions", parts}, {"retrying", retry}};
    }

    void serve(http::Request& req, const std::shared_ptr<http::Responder>& res) {
        if (auto refused = guard.check_host(req)) return res->respond(std::move(*refused));
        if (req.method != "GET") return res->respond(http::Response::error(405, "method_not_allowed", "GET only"));
        if (req.path == "/healthz") return res->respond(http::Response::json(200, {{"status", "ok"}}));
        if (auto refused = guard.check_token(req)) return res->respond(std::move(*refused));
        if (req.path == "/readyz") {
            bool nats_ok = nc && nc->connected();
            bool db_ok = false;
            std::string db_error;
            try {
                auto r = pool->run([](pqxx::connection& c) {
                    pqxx::nontransaction tx(c);
                    tx.exec("SELECT 1");
                    return 0;
                });
                db_ok = r.ok();
                if (!r) db_error = error_text(r.error());
            } catch (const std::exception& e) {
                db_error = e.what();
            }
            auto st = status_json();
            // Events failing on an unavailable dependency for a while: not ready (they are retried).
            bool handlers_ok = st["retrying"]["events"].get<int>() == 0 || st["retrying"].value("for_seconds", 0.0) < 10.0;
            bool ready = nats_ok && db_ok && handlers_ok;
            json body = {{"status", ready ? "ready" : "not_ready"},
                         {"nats", nats_ok ? "ok" : "disconnected"},
                         {"database", db_ok ? "ok" : db_error},
                         {"handlers", handlers_ok ? "ok" : "retrying: " + st["retrying"].value("last_error", std::string())},
                         {"runtime", st}};
            return res->respond(http::Response::json(ready ? 200 : 503, body));
        }
        if (req.path == "/status") return res->respond(http::Response::json(200, status_json()));
        if (req.path == "/metrics") {
            http::Response r;
            r.content_type = "text/plain; version=0.0.4";
            r.body = registry.render();
            return res->respond(std::move(r));
        }
        res->respond(http::Response::error(404, "not_found", "no route for " + req.method + " " + req.path));
    }
};

// ===========================================================================================
// Runtime

Runtime::Runtime(Options opts, Handler handler, BatchHandler batch) : impl_(std::make_shared<Impl>()) {
    impl_->opts = std::move(opts);
    impl_->handler = std::move(handler);
    impl_->batch_handler = std::move(batch);
    impl_->log = log::get("processor");
    impl_->init_metrics();
}

Runtime::~Runtime() { stop(); }

metrics::Registry& Runtime::metrics() { return impl_->registry; }
const Options& Runtime::options() const { return impl_->opts; }
std::uint16_t Runtime::port() const { return impl_->server ? impl_->server->port() : 0; }
std::string Runtime::member_id() const { return impl_->member; }
std::vector<int> Runtime::owned_partitions() const {
    std::lock_guard lk(impl_->mu);
    std::vector<int> out;
    for (auto& [p, c] : impl_->claims) out.push_back(p);
    return out;
}

Status Runtime::start() {
    auto& d = *impl_;
    if (d.started) return Error::make("invalid_state", "runtime already started");
    const auto& o = d.opts;
    if (o.name.empty() || o.name.find_first_of(".*> \t") != std::string::npos)
        return Error::make("invalid_config", "processor name '" + o.name + "' must be non-empty without '.', '*', '>' or spaces");
    if (o.concurrency < 1) return Error::make("invalid_config", "concurrency must be at least 1");
    if (o.max_attempts < 1) return Error::make("invalid_config", "max_attempts must be at least 1");
    if (o.tick.count() < 10 || o.lease_ttl < 2 * o.tick)
        return Error::make("invalid_config", "the lease must last at least two ticks (lease_ttl " +
                                                 std::to_string(o.lease_ttl.count()) + " ms, tick " +
                                                 std::to_string(o.tick.count()) + " ms)");
    auto hp = config::parse_listen(o.listen);
    if (!hp) return Error::make("invalid_config", "listen address '" + o.listen + "' is not host:port");
    for (const auto& t : o.types)
        if (t != "*" && !events::valid_type_name(t)) return Error::make("invalid_config", "'" + t + "' is not an event type");

    if (auto s = migrate(o.database_url, o.partitions); !s) return s;
    d.init_partition_metrics();
    d.pool = std::make_unique<pg::Pool>(o.database_url, static_cast<std::size_t>(o.concurrency) + 3);
    d.membership = std::make_unique<Membership>(o.database_url, o.name, d.member, o.lease_ttl);

    nats::ConnectOptions co;
    co.url = o.nats_url;
    co.name = o.name;
    auto nc = nats::Connection::connect(co);
    if (!nc) return std::move(nc).error();
    d.nc = std::move(*nc);
    // The stream is the store's to create (with its replica count): until it exists, the
    // partitions' cursors keep retrying, so a processor may still start first.

    bool all = o.types.empty() || std::find(o.types.begin(), o.types.end(), "*") != o.types.end();
    if (!all && o.types.size() == 1) {
        d.filter_type = o.types[0];
    } else if (!all) {
        d.type_filter.insert(o.types.begin(), o.types.end());
    }

    d.guard = http::Guard(http::GuardOptions{o.api_token, o.allowed_hosts});
    http::ServerOptions so;
    so.host = hp->host;
    so.port = hp->port;
    so.io_threads = 1;
    so.worker_threads = 2;
    d.server = std::make_unique<http::Server>(
        so, [impl = impl_.get()](http::Request& req, std::shared_ptr<http::Responder> res) { impl->serve(req, res); });
    try {
        d.server->start();
    } catch (const std::exception& e) {
        d.server.reset();
        d.nc.reset();
        return Error::make("listen", e.what());
    }

    d.started = true;
    d.stopping = false;
    for (int i = 0; i < o.concurrency; ++i) d.workers.emplace_back([&d] { d.worker_loop(); });
    d.coordinator_thread = std::thread([&d] { d.coordinator_loop(); });
    d.poll_thread = std::thread([&d] { d.poll_loop(); });
    d.log->info("processor {} member {} started: {} partitions of {} ({}), {} workers, lease {} ms; health on {}:{}", o.name,
                d.member, o.partitions, o.stream, "events." + d.filter_type + ".<p>", o.concurrency, o.lease_ttl.count(),
                hp->host, d.server->port());
    return ok();
}

void Runtime::stop() {
    auto& d = *impl_;
    if (!d.started) return;
    {
        std::lock_guard lk(d.mu);
        if (d.stopping) return;
        d.stopping = true;
    }
    d.work_cv.notify_all();
    d.stop_cv.notify_all();
    if (d.coordinator_thread.joinable()) d.coordinator_thread.join();
    std::vector<ClaimPtr> held;
    {
        std::lock_guard lk(d.mu);
        for (auto& [p, c] : d.claims) held.push_back(c);
    }
    // Fetching stops at once; running handlers get drain_timeout.
    for (auto& c : held) {
        c->releasing.store(true);
        c->cv.notify_all();
    }
    for (auto& c : held)
        if (c->fetcher.joinable()) c->fetcher.join();
    {
        std::unique_lock lk(d.mu);
        if (!d.idle_cv.wait_for(lk, d.opts.drain_timeout, [&] { return d.running_handlers == 0; }))
            d.log->warn(
                "{} handler(s) still running after {} ms: their partitions are released anyway (their effects are fenced)",
                d.running_handlers, d.opts.drain_timeout.count());
    }
    for (auto& c : held) d.try_release(c, true);
    if (auto s = d.membership->leave(); !s) d.log->warn("cannot leave the group: {}", error_text(s.error()));
    for (auto& w : d.workers)
        if (w.joinable()) w.join();
    d.workers.clear();
    if (d.poll_thread.joinable()) d.poll_thread.join();
    if (d.server) d.server->stop();
    {
        std::lock_guard lk(d.mu);
        d.queues.clear();
        d.ready.clear();
        d.claims.clear();
        d.parked_in_queue.clear();
    }
    d.nc.reset();
    d.server.reset();
    d.pool.reset();
    d.membership.reset();
    d.started = false;
    d.log->info("processor {} stopped", d.opts.name);
}

}  // namespace engram::processor
