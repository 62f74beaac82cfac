// engram::processor runtime. Threads (see README.md):
//  - fetch:     pulls batches from the durable consumer, parses envelopes, appends each message to
//               its aggregate's queue; pauses while max_buffered messages are unfinished.
//  - workers:   `concurrency` threads; each takes a ready aggregate, runs the head of its queue
//               (with in-process retries), then hands the aggregate back. An aggregate is owned by
//               at most one worker at a time, so its events run strictly in order.
//  - heartbeat: in_progress() on every unfinished message every ack_wait/3.
//  - poller:    parked rows with retry_requested, parked count, consumer lag.
#include "engram/processor/processor.h"

#include "engram/config/config.h"
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
#include <unordered_map>
#include <unordered_set>

namespace engram::processor {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr const char* kMigration = R"SQL(
CREATE TABLE IF NOT EXISTS processor_parked (
    processor text NOT NULL,
    event_id uuid NOT NULL,
    position bigint NOT NULL,
    aggregate_id text NOT NULL,
    type text NOT NULL,
    envelope jsonb NOT NULL,
    error text NOT NULL DEFAULT '',
    attempts int NOT NULL DEFAULT 0,
    parked_at timestamptz NOT NULL DEFAULT now(),
    retry_requested boolean NOT NULL DEFAULT false,
    PRIMARY KEY (processor, event_id)
);
CREATE INDEX IF NOT EXISTS processor_parked_retry ON processor_parked (processor) WHERE retry_requested;
)SQL";

// One unit of work in an aggregate's queue: a JetStream message, or a parked event to retry.
struct Item {
    std::unique_ptr<nats::InMessage> msg;  // null for a parked retry
    events::Event event;
    std::uint64_t seq = 0;        // stream sequence (0 for a parked retry)
    std::uint64_t delivered = 0;  // JetStream delivery count (0 for a parked retry)
    int parked_attempts = 0;      // for a parked retry: attempts stored in the row
    // Guards msg against the heartbeat thread and stop() (InMessage: one thread at a time).
    std::mutex mu;
    bool settled = false;  // acked / nak'ed / termed: never touch msg again
};
using ItemPtr = std::shared_ptr<Item>;

struct AggQueue {
    std::deque<ItemPtr> items;
    bool active = false;  // a worker owns it
};

std::string error_text(const Error& e) { return e.detail.empty() ? e.code : e.code + ": " + e.detail; }

}  // namespace

struct Context::Impl {
    Runtime::Impl* rt;
    const events::Event* event;
    int attempt;
    std::uint64_t delivered;
    bool parked;
    http::Client* client;
};

struct Runtime::Impl {
    Options opts;
    Handler handler;
    std::shared_ptr<spdlog::logger> log;
    std::string labels;

    metrics::Registry registry;
    metrics::Counter* handled = nullptr;
    metrics::Counter* failed_attempts = nullptr;
    metrics::Counter* parked_total = nullptr;
    metrics::Counter* parked_retried_ok = nullptr;
    metrics::Counter* skipped = nullptr;
    metrics::Counter* undecodable = nullptr;
    metrics::Gauge* parked_rows = nullptr;
    metrics::Gauge* lag = nullptr;
    metrics::Gauge* in_flight = nullptr;
    metrics::Gauge* buffered_g = nullptr;
    metrics::Histogram* latency = nullptr;

    std::unique_ptr<pg::Pool> pool;
    std::unique_ptr<nats::Connection> nc;
    std::unique_ptr<nats::PullConsumer> consumer;
    std::unique_ptr<http::Server> server;
    http::Guard guard;                  // as the store's: /healthz open, the rest behind the token or the Host allow-list
    std::set<std::string> type_filter;  // empty = all (client-side filter when several types)

    // Work state, under mu.
    std::mutex mu;
    std::condition_variable work_cv;   // workers: an aggregate became ready / stopping
    std::condition_variable space_cv;  // fetch: buffer has room / stopping
    std::condition_variable stop_cv;   // sleeps (back-off, heartbeat, poll) wake on stop
    std::unordered_map<std::string, AggQueue> queues;
    std::deque<std::string> ready;
    std::map<std::uint64_t, ItemPtr> unfinished;      // messages by stream seq, until settled
    std::unordered_set<std::string> parked_in_queue;  // event ids of parked retries queued
    int running_handlers = 0;
    std::condition_variable idle_cv;  // running_handlers reached 0
    bool stopping = false;
    bool started = false;

    std::thread fetch_thread, heartbeat_thread, poll_thread;
    std::vector<std::thread> workers;

    // ---------------------------------------------------------------------------------------
    void init_metrics() {
        labels = "processor=\"" + opts.name + "\"";
        handled = &registry.counter("processor_events_handled_total", "events handled successfully (acked)", labels);
        failed_attempts =
            &registry.counter("processor_handler_failures_total", "handler attempts that returned an error", labels);
        parked_total = &registry.counter("processor_events_parked_total", "events parked by this process", labels);
        parked_retried_ok =
            &registry.counter("processor_parked_retried_total", "parked events that succeeded on a requested retry", labels);
        skipped = &registry.counter("processor_events_skipped_total", "messages of types this processor does not handle (acked)",
                                    labels);
        undecodable = &registry.counter("processor_events_undecodable_total",
                                        "messages whose body is not an event envelope (terminated)", labels);
        parked_rows = &registry.gauge("processor_parked_events", "rows in processor_parked for this processor", labels);
        lag = &registry.gauge("processor_consumer_lag", "messages in the stream not yet delivered to the consumer (num_pending)",
                              labels);
        in_flight = &registry.gauge("processor_in_flight", "handlers running now", labels);
        buffered_g = &registry.gauge("processor_buffered_events", "messages fetched and not yet acked", labels);
        latency =
            &registry.histogram("processor_handler_seconds", "handler latency per attempt", metrics::latency_buckets(), labels);
    }

    bool sleep_unless_stopping(std::chrono::milliseconds d) {
        std::unique_lock lk(mu);
        return !stop_cv.wait_for(lk, d, [&] { return stopping; });
    }

    // ---------------------------------------------------------------------------------------
    Status migrate() {
        try {
            pqxx::connection c(opts.database_url);
            pqxx::work tx(c);
            tx.exec("SELECT pg_advisory_xact_lock(hashtext('engram.processor.migrate'))");
            tx.exec(kMigration);
            tx.commit();
            return ok();
        } catch (const std::exception& e) {
            return Error::make("database", std::string("cannot migrate processor_parked: ") + e.what());
        }
    }

    // ---------------------------------------------------------------------------------------
    void enqueue_locked(ItemPtr item) {
        auto& q = queues[item->event.aggregate_id];
        q.items.push_back(item);
        if (!q.active && q.items.size() == 1) {
            ready.push_back(item->event.aggregate_id);
            work_cv.notify_one();
        }
    }

    // Settles a message (under its own mutex): ack/nak/term once.
    enum class Settle { ack, nak, term };
    bool settle(Item& it, Settle how) {
        if (!it.msg) return true;
        std::lock_guard lk(it.mu);
        if (it.settled) return false;
        it.settled = true;
        Status s = ok();
        switch (how) {
            case Settle::ack:
                s = it.msg->ack_sync();
                break;
            case Settle::nak:
                s = it.msg->nak();
                break;
            case Settle::term:
                s = it.msg->term();
                break;
        }
        if (!s)
            log->warn("{} of event {} (seq {}) failed: {} (it will be redelivered)",
                      how == Settle::ack   ? "ack"
                      : how == Settle::nak ? "nak"
                                           : "term",
                      it.event.id.str(), it.seq, error_text(s.error()));
        return true;
    }

    void forget(const Item& it) {
        if (!it.seq) return;
        std::lock_guard lk(mu);
        unfinished.erase(it.seq);
        buffered_g->set(static_cast<double>(unfinished.size()));
        space_cv.notify_all();
    }

    // ---------------------------------------------------------------------------------------
    void fetch_loop() {
        auto last_error_log = Clock::now() - std::chrono::hours(1);
        while (true) {
            std::size_t room;
            {
                std::unique_lock lk(mu);
                space_cv.wait(lk, [&] { return stopping || unfinished.size() < opts.max_buffered; });
                if (stopping) return;
                room = opts.max_buffered - unfinished.size();
            }
            int batch = static_cast<int>(std::min<std::size_t>(room, 64));
            auto r = consumer->fetch(batch, std::chrono::milliseconds(500));
            if (!r) {
                if (Clock::now() - last_error_log > std::chrono::seconds(10)) {
                    log->warn("fetch failed: {} (retrying)", error_text(r.error()));
                    last_error_log = Clock::now();
                }
                sleep_unless_stopping(std::chrono::milliseconds(500));
                continue;
            }
            for (auto& m : *r) accept(std::move(m));
        }
    }

    void accept(std::unique_ptr<nats::InMessage> m) {
        auto item = std::make_shared<Item>();
        item->seq = m->msg().stream_seq;
        item->delivered = m->msg().delivered;
        // A message that is not an acceptable envelope (not JSON, too deep, ...) is a poison message:
        // terminated below, never redelivered, never blocking the others.
        auto body = parse_json(m->msg().data, "the message");
        auto ev = body ? events::Event::from_json(*body) : Result<events::Event>(std::move(body).error());
        item->msg = std::move(m);
        if (!ev) {
            undecodable->inc();
            log->error("message seq {} on {} is not an event envelope ({}): terminated", item->seq, item->msg->msg().subject,
                       error_text(ev.error()));
            settle(*item, Settle::term);
            return;
        }
        item->event = std::move(*ev);
        if (!type_filter.empty() && !type_filter.count(item->event.type)) {
            skipped->inc();
            settle(*item, Settle::ack);
            return;
        }
        // (When stopping, workers take nothing more: stop() naks whatever is in `unfinished`.)
        std::lock_guard lk(mu);
        if (unfinished.count(item->seq)) {
            // A redelivery of a message still queued or running here (ack_wait passed): the first copy
            // keeps its place; this delivery is dropped (the first copy's ack settles the sequence).
            log->debug("redelivery of seq {} while still queued: ignored", item->seq);
            return;
        }
        unfinished.emplace(item->seq, item);
        buffered_g->set(static_cast<double>(unfinished.size()));
        enqueue_locked(item);
    }

    // ---------------------------------------------------------------------------------------
    void worker_loop() {
        http::ClientOptions copts;
        copts.timeout = std::chrono::milliseconds(15000);
        if (!opts.api_token.empty()) copts.default_headers.emplace_back("Authorization", "Bearer " + opts.api_token);
        http::Client client(opts.event_store_url, copts);
        while (true) {
            std::string agg;
            ItemPtr item;
            {
                std::unique_lock lk(mu);
                work_cv.wait(lk, [&] { return stopping || !ready.empty(); });
                if (stopping) return;
                agg = std::move(ready.front());
                ready.pop_front();
                auto& q = queues[agg];
                q.active = true;
                item = q.items.front();
            }
            process(*item, client);
            {
                std::lock_guard lk(mu);
                auto& q = queues[agg];
                q.items.pop_front();
                q.active = false;
                if (!item->msg) parked_in_queue.erase(item->event.id.str());
                if (q.items.empty()) {
                    queues.erase(agg);
                } else {
                    ready.push_back(agg);  // behind the other ready aggregates: fairness
                    work_cv.notify_one();
                }
            }
        }
    }

    // nullopt: not run because stop() was called (the message stays unacked).
    std::optional<Status> run_handler(const Item& it, int attempt, http::Client& client) {
        Context::Impl ci{this, &it.event, attempt, it.delivered, !it.msg, &client};
        Context ctx(&ci);
        {
            std::lock_guard lk(mu);
            if (stopping) return std::nullopt;  // checked with the count, so stop() sees every started run
            ++running_handlers;
            in_flight->set(running_handlers);
        }
        auto t0 = Clock::now();
        Status s = ok();
        try {
            s = handler(ctx);
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
            if (running_handlers == 0) idle_cv.notify_all();
        }
        if (!s) failed_attempts->inc();
        return std::optional<Status>(std::move(s));
    }

    std::chrono::milliseconds backoff_for(int attempt) const {
        auto d = opts.retry_backoff;
        for (int i = 1; i < attempt && d < opts.max_backoff; ++i) d *= 2;
        return std::min(d, opts.max_backoff);
    }

    bool is_stopping() {
        std::lock_guard lk(mu);
        return stopping;
    }

    void process(Item& it, http::Client& client) {
        if (!it.msg) return process_parked_retry(it, client);
        const auto& ev = it.event;
        if (opts.max_deliver > 0 && it.delivered >= static_cast<std::uint64_t>(opts.max_deliver)) {
            // The server will not deliver it again: park it unhandled rather than risk losing it.
            auto why =
                fmt::format("delivered {} times without an ack (crash loop?); parked without running the handler", it.delivered);
            log->error("event {} ({} of {}): {}", ev.id.str(), ev.type, ev.aggregate_id, why);
            if (park(it, why, 0)) {
                settle(it, Settle::ack);
                forget(it);
            }
            return;
        }
        std::string last_error;
        int attempt = 1;
        for (; attempt <= opts.max_attempts; ++attempt) {
            auto r = run_handler(it, attempt, client);
            if (!r) return;  // stopping: left unacked, nak'ed by stop()
            auto& s = *r;
            if (s) {
                if (settle(it, Settle::ack)) handled->inc();
                forget(it);
                return;
            }
            last_error = error_text(s.error());
            log->warn("handler failed for event {} ({} of {}), attempt {}/{}: {}", ev.id.str(), ev.type, ev.aggregate_id, attempt,
                      opts.max_attempts, last_error);
            if (attempt < opts.max_attempts && !sleep_unless_stopping(backoff_for(attempt))) return;
        }
        log->error("event {} ({} of {}) parked after {} attempts: {}", ev.id.str(), ev.type, ev.aggregate_id, opts.max_attempts,
                   last_error);
        if (park(it, last_error, opts.max_attempts)) {
            settle(it, Settle::ack);
            forget(it);
        }
    }

    // Writes the parked row; retries (holding the aggregate's queue) while the database is
    // unreachable. False only when stopping before it could be written (the message stays unacked).
    bool park(const Item& it, const std::string& error, int attempts) {
        const auto& ev = it.event;
        auto env = ev.to_json().dump();
        for (int round = 0;; ++round) {
            try {
                auto r = pool->run([&](pqxx::connection& c) {
                    pqxx::work tx(c);
                    tx.exec_params(
                        "INSERT INTO processor_parked (processor, event_id, position, aggregate_id, type, envelope, error, "
                        "attempts) "
                        "VALUES ($1, $2::uuid, $3, $4, $5, $6::jsonb, $7, $8) "
                        "ON CONFLICT (processor, event_id) DO UPDATE SET error = EXCLUDED.error, "
                        "attempts = processor_parked.attempts + EXCLUDED.attempts, parked_at = now(), retry_requested = false",
                        opts.name, ev.id.str(), ev.position.value(), ev.aggregate_id, ev.type, env, error, attempts);
                    tx.commit();
                    return 0;
                });
                if (r) {
                    parked_total->inc();
                    parked_rows->add(1);
                    return true;
                }
                log->warn("cannot park event {}: {} (retrying)", ev.id.str(), error_text(r.error()));
            } catch (const std::exception& e) {
                log->error("cannot park event {}: {} (retrying)", ev.id.str(), e.what());
            }
            if (!sleep_unless_stopping(backoff_for(std::min(round + 1, 10)))) return false;
        }
    }

    void process_parked_retry(Item& it, http::Client& client) {
        const auto& ev = it.event;
        auto r = run_handler(it, it.parked_attempts + 1, client);
        if (!r) return;  // stopping: the row keeps retry_requested, the next instance retries
        auto& s = *r;
        try {
            auto r = pool->run([&](pqxx::connection& c) {
                pqxx::work tx(c);
                if (s)
                    tx.exec_params("DELETE FROM processor_parked WHERE processor = $1 AND event_id = $2::uuid", opts.name,
                                   ev.id.str());
                else
                    tx.exec_params(
                        "UPDATE processor_parked SET error = $3, attempts = attempts + 1, retry_requested = false "
                        "WHERE processor = $1 AND event_id = $2::uuid",
                        opts.name, ev.id.str(), error_text(s.error()));
                tx.commit();
                return 0;
            });
            if (!r) log->warn("cannot update parked event {}: {}", ev.id.str(), error_text(r.error()));
        } catch (const std::exception& e) {
            log->error("cannot update parked event {}: {}", ev.id.str(), e.what());
        }
        if (s) {
            parked_retried_ok->inc();
            handled->inc();
            parked_rows->add(-1);
            log->info("parked event {} ({} of {}) handled on retry", ev.id.str(), ev.type, ev.aggregate_id);
        } else {
            log->warn("retry of parked event {} failed: {}", ev.id.str(), error_text(s.error()));
        }
    }

    // ---------------------------------------------------------------------------------------
    void heartbeat_loop() {
        auto every = std::max(opts.ack_wait / 3, std::chrono::milliseconds(100));
        while (sleep_unless_stopping(every)) {
            std::vector<ItemPtr> items;
            {
                std::lock_guard lk(mu);
                items.reserve(unfinished.size());
                for (auto& [seq, it] : unfinished) items.push_back(it);
            }
            for (auto& it : items) {
                std::lock_guard lk(it->mu);
                if (!it->settled && it->msg) (void)it->msg->in_progress();
            }
        }
    }

    void poll_loop() {
        do {
            poll_parked();
            if (auto ci = consumer->info(); ci) lag->set(static_cast<double>(ci->num_pending));
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
                auto item = std::make_shared<Item>();
                item->event = std::move(*ev);
                item->parked_attempts = attempts;
                std::lock_guard lk(mu);
                if (stopping) return;
                if (!parked_in_queue.insert(item->event.id.str()).second) continue;  // already queued
                enqueue_locked(item);
            }
        } catch (const std::exception& e) {
            log->warn("parked poll failed: {}", e.what());
        }
    }

    // ---------------------------------------------------------------------------------------
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
            json body = {{"status", nats_ok && db_ok ? "ready" : "not_ready"},
                         {"nats", nats_ok ? "ok" : "disconnected"},
                         {"database", db_ok ? "ok" : db_error}};
            return res->respond(http::Response::json(nats_ok && db_ok ? 200 : 503, body));
        }
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
// Context

const events::Event& Context::event() const { return *impl_->event; }
int Context::attempt() const { return impl_->attempt; }
std::uint64_t Context::delivered() const { return impl_->delivered; }
bool Context::retrying_parked() const { return impl_->parked; }
bool Context::stopping() const { return impl_->rt->is_stopping(); }
pg::Pool& Context::db() { return *impl_->rt->pool; }

Result<GlobalPosition> Context::append(std::string_view step, events::NewEvent e) {
    const auto& cause = *impl_->event;
    e.id = Uuid::v5(cause.id, step);
    if (!e.metadata.is_object()) e.metadata = json::object();
    auto& md = e.metadata;
    md[std::string(events::meta::causation_id)] = cause.id.str();
    if (!md.contains(events::meta::correlation_id)) {
        auto it = cause.metadata.find(events::meta::correlation_id);
        md[std::string(events::meta::correlation_id)] =
            it != cause.metadata.end() && it->is_string() && !it->get<std::string>().empty() ? it->get<std::string>()
                                                                                             : cause.id.str();
    }
    for (auto key : {events::meta::user_id, events::meta::session_id}) {
        if (md.contains(key)) continue;
        auto it = cause.metadata.find(key);
        if (it != cause.metadata.end() && it->is_string()) md[std::string(key)] = *it;
    }
    if (!md.contains(events::meta::source)) md[std::string(events::meta::source)] = impl_->rt->opts.name;

    auto r = impl_->client->post_json("/events", e.to_json());
    if (!r) return std::move(r).error();
    auto body = r->json();
    if (r->status != 201 && r->status != 200) {
        std::string code =
            body.is_object() && body.contains("error") && body["error"].is_string() ? body["error"].get<std::string>() : "";
        std::string detail = body.is_object() && body.contains("detail") && body["detail"].is_string()
                                 ? body["detail"].get<std::string>()
                                 : r->body;
        return Error{"event_store",
                     fmt::format("append of {} ({}) answered {}: {}{}", e.type, e.id->str(), r->status,
                                 code.empty() ? "" : code + ": ", detail),
                     {{"status", r->status}, {"error", code}}};
    }
    try {
        return GlobalPosition(body.at("events").at(0).at("position").get<std::int64_t>());
    } catch (const std::exception& ex) {
        return Error::make("event_store", std::string("unexpected append answer: ") + r->body);
    }
}

// ===========================================================================================
// Runtime

Runtime::Runtime(Options opts, Handler handler) : impl_(std::make_shared<Impl>()) {
    impl_->opts = std::move(opts);
    impl_->handler = std::move(handler);
    impl_->log = log::get("processor");
    impl_->init_metrics();
}

Runtime::~Runtime() { stop(); }

metrics::Registry& Runtime::metrics() { return impl_->registry; }
const Options& Runtime::options() const { return impl_->opts; }
std::uint16_t Runtime::port() const { return impl_->server ? impl_->server->port() : 0; }

Status Runtime::start() {
    auto& d = *impl_;
    if (d.started) return Error::make("invalid_state", "runtime already started");
    const auto& o = d.opts;
    if (o.name.empty() || o.name.find_first_of(".*> \t") != std::string::npos)
        return Error::make("invalid_config", "processor name '" + o.name + "' must be non-empty without '.', '*', '>' or spaces");
    if (o.concurrency < 1) return Error::make("invalid_config", "concurrency must be at least 1");
    if (o.max_attempts < 1) return Error::make("invalid_config", "max_attempts must be at least 1");
    auto hp = config::parse_listen(o.listen);
    if (!hp) return Error::make("invalid_config", "listen address '" + o.listen + "' is not host:port");

    if (auto s = d.migrate(); !s) return s;
    d.pool = std::make_unique<pg::Pool>(o.database_url, static_cast<std::size_t>(o.concurrency) + 3);

    nats::ConnectOptions co;
    co.url = o.nats_url;
    co.name = o.name;
    auto nc = nats::Connection::connect(co);
    if (!nc) return std::move(nc).error();
    d.nc = std::move(*nc);
    // Same call (and so the same configuration) as the event store's relay: a processor started
    // first does not have to wait for the store.
    if (auto s = d.nc->ensure_stream(o.stream, {"events.>"}); !s) return s;

    bool all = o.types.empty() || std::find(o.types.begin(), o.types.end(), "*") != o.types.end();
    nats::ConsumerOptions cons;
    cons.stream = o.stream;
    cons.durable = o.name;
    if (all) {
        cons.filter_subjects = {"events.>"};
    } else if (o.types.size() == 1) {
        cons.filter_subjects = {"events." + o.types[0]};
    } else {
        cons.filter_subjects = {"events.>"};
        d.type_filter.insert(o.types.begin(), o.types.end());
    }
    cons.max_deliver = o.max_deliver;
    cons.ack_wait = o.ack_wait;
    cons.max_ack_pending = static_cast<std::int64_t>(std::max<std::size_t>(o.max_buffered * 2, 1000));
    auto pc = nats::PullConsumer::create(*d.nc, cons);
    if (!pc) {
        d.nc.reset();
        return std::move(pc).error();
    }
    d.consumer = std::move(*pc);

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
        d.consumer.reset();
        d.nc.reset();
        return Error::make("listen", e.what());
    }

    d.started = true;
    d.stopping = false;
    for (int i = 0; i < o.concurrency; ++i) d.workers.emplace_back([&d] { d.worker_loop(); });
    d.fetch_thread = std::thread([&d] { d.fetch_loop(); });
    d.heartbeat_thread = std::thread([&d] { d.heartbeat_loop(); });
    d.poll_thread = std::thread([&d] { d.poll_loop(); });
    d.log->info("processor {} consuming {} ({}) with {} workers; health on {}:{}", o.name, o.stream, cons.filter_subjects[0],
                o.concurrency, hp->host, d.server->port());
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
    d.space_cv.notify_all();
    d.stop_cv.notify_all();
    if (d.fetch_thread.joinable()) d.fetch_thread.join();

    // Running handlers finish (bounded by drain_timeout); queued work is not started.
    {
        std::unique_lock lk(d.mu);
        if (!d.idle_cv.wait_for(lk, d.opts.drain_timeout, [&] { return d.running_handlers == 0; }))
            d.log->warn("{} handler(s) still running after {} ms: their events are nak'ed now and will not be acked",
                        d.running_handlers, d.opts.drain_timeout.count());
    }
    // Everything not acked yet goes back to the server, in stream order, for the next instance.
    // settle() marks each item, so a handler finishing late cannot ack it any more.
    std::vector<ItemPtr> rest;
    {
        std::lock_guard lk(d.mu);
        for (auto& [seq, it] : d.unfinished) rest.push_back(it);
    }
    for (auto& it : rest) d.settle(*it, Impl::Settle::nak);
    for (auto& w : d.workers)
        if (w.joinable()) w.join();
    d.workers.clear();
    if (d.heartbeat_thread.joinable()) d.heartbeat_thread.join();
    if (d.poll_thread.joinable()) d.poll_thread.join();
    if (d.nc) (void)d.nc->flush(std::chrono::milliseconds(2000));
    if (d.server) d.server->stop();
    {
        std::lock_guard lk(d.mu);
        d.queues.clear();
        d.ready.clear();
        d.unfinished.clear();
        d.parked_in_queue.clear();
    }
    d.consumer.reset();
    d.nc.reset();
    d.server.reset();
    d.pool.reset();
    d.started = false;
    d.log->info("processor {} stopped", d.opts.name);
}

}  // namespace engram::processor
