#include "engram/store/writer.h"

#include "engram/log/log.h"
#include "engram/metrics/metrics.h"
#include "engram/pg/pg.h"
#include "engram/store/schema.h"
#include "rows.h"

#include <charconv>
#include <unordered_map>

namespace engram::store {
namespace {

constexpr long long kWriterLock = 0x656e6772616d02;  // serialises writers of several store processes
constexpr std::size_t kInsertChunk = 500;
constexpr std::size_t kMaxCachedAggregates = 200000;

Appended appended_of(const events::Event& e) { return Appended{e.id, e.position, e.version, e.timestamp}; }

}  // namespace

Writer::Writer(Options opts, metrics::Registry& m)
    : opts_(std::move(opts)),
      log_(log::get("writer")),
      watchdog_(std::make_unique<pg::Watchdog>()),
      batch_events_(m.histogram("engram_commit_batch_events", "events written per group commit",
                                {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096})),
      batch_requests_(m.histogram("engram_commit_batch_requests", "append requests per group commit",
                                  {1, 2, 4, 8, 16, 32, 64, 128, 256, 512})),
      commit_seconds_(
          m.histogram("engram_commit_seconds", "duration of one group commit transaction", metrics::latency_buckets())),
      append_seconds_(m.histogram("engram_append_seconds", "append latency from queueing to commit", metrics::latency_buckets())),
      created_(m.counter("engram_appends_total", "append requests by result", "result=\"created\"")),
      replayed_(m.counter("engram_appends_total", "append requests by result", "result=\"idempotent\"")),
      rejected_(m.counter("engram_appends_total", "append requests by result", "result=\"rejected\"")),
      unavailable_(m.counter("engram_appends_total", "append requests by result", "result=\"unavailable\"")),
      events_written_(m.counter("engram_events_appended_total", "events written to the log")) {}

Writer::~Writer() { stop(); }

void Writer::on_commit(CommitListener l) { listener_ = std::move(l); }

void Writer::start() {
    ensure_connection();
    thread_ = std::thread([this] { run(); });
}

void Writer::stop() {
    {
        std::lock_guard lk(mu_);
        if (stopping_ && !thread_.joinable()) return;
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::deque<Pending> rest;
    {
        std::lock_guard lk(mu_);
        rest.swap(queue_);
    }
    for (auto& p : rest) p.cb(Error::make("unavailable", "the event store is shutting down"));
}

void Writer::submit(AppendRequest req, Callback cb) {
    {
        std::lock_guard lk(mu_);
        if (!stopping_ && queue_.size() < opts_.max_queue) {
            queue_.push_back(Pending{std::move(req), std::move(cb), std::chrono::steady_clock::now()});
            cv_.notify_one();
            return;
        }
    }
    unavailable_.inc();
    cb(Error::make("unavailable", "the event store is overloaded or shutting down; retry later"));
}

bool Writer::ensure_connection() {
    if (conn_ && conn_->is_open()) return true;
    conn_.reset();
    auto now = std::chrono::steady_clock::now();
    // Don't hammer a database that is down: one attempt per interval, requests in between fail fast.
    if (last_connect_ != std::chrono::steady_clock::time_point{} && now - last_connect_ < opts_.reconnect_interval) return false;
    last_connect_ = now;
    auto c = pg::connect(opts_.database_url);
    if (!c) {
        if (db_up_.exchange(false)) log_->warn("{}", c.error().detail);
        return false;
    }
    conn_ = std::move(*c);
    forget_cache();  // others may have written while this writer was away
    try {
        pqxx::nontransaction(*conn_).exec("SET standard_conforming_strings = on");  // insert_sql's literals rely on it
    } catch (const std::exception& e) {
        log_->warn("writer connected but cannot set standard_conforming_strings: {}", e.what());
        conn_.reset();
        return false;
    }
    try {
        auto guard = watchdog_->arm(*conn_, opts_.commit_timeout);
        migrate(*conn_);
        pqxx::work tx(*conn_);
        auto r = tx.exec("SELECT coalesce(max(position), 0) FROM events");
        head_ = r[0][0].as<std::int64_t>();
        tx.commit();
    } catch (const std::exception& e) {
        log_->warn("writer connected but cannot read the log head: {}", e.what());
        conn_.reset();
        return false;
    }
    if (!db_up_.exchange(true)) log_->info("writer connected to the database, head position {}", head_.load());
    return true;
}

void Writer::run() {
    std::vector<Pending> batch;
    for (;;) {
        batch.clear();
        {
            std::unique_lock lk(mu_);
            cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
            if (stopping_) return;
            std::size_t n = 0;
            // Take whatever has queued up while the previous commit ran: that is the group.
            while (!queue_.empty() && (batch.empty() || n + queue_.front().req.events.size() <= opts_.max_batch_events)) {
                n += queue_.front().req.events.size();
                batch.push_back(std::move(queue_.front()));
                queue_.pop_front();
            }
        }
        process(batch);
    }
}

void Writer::process(std::vector<Pending>& batch) {
    auto fail_all = [&](const Error& err) {
        for (auto& p : batch) {
            unavailable_.inc();
            p.cb(err);
        }
    };
    if (!ensure_connection()) {
        fail_all(Error::make("unavailable", "the database is unavailable; retry later"));
        return;
    }
    std::vector<Result<AppendOutcome>> results;
    std::vector<events::Event> committed;
    bool timed_out = false;
    try {
        auto guard = watchdog_->arm(*conn_, opts_.commit_timeout);
        auto t0 = std::chrono::steady_clock::now();
        try {
            commit_batch(batch, results, committed);
        } catch (...) {
            timed_out = guard.fired();
            throw;
        }
        commit_seconds_.observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    } catch (const std::exception& e) {
        if (pg::is_connection_error(e)) {
            // The commit may or may not have happened; clients retrying with their ids get an
            // idempotent 200 if it did.
            db_up_ = false;
            conn_.reset();
            if (timed_out) {
                log_->warn(
                    "a group commit of {} requests took longer than {} ms: connection cut (is the database frozen, "
                    "or waiting for a synchronous standby?)",
                    batch.size(), opts_.commit_timeout.count());
                fail_all(Error::make("unavailable", "the database did not confirm the commit within " +
                                                        std::to_string(opts_.commit_timeout.count()) +
                                                        " ms; the outcome is unknown: retry with the same event ids"));
            } else {
                log_->warn("database connection lost during a commit: {}", e.what());
                fail_all(pg::unavailable(e));
            }
            return;
        }
        if (batch.size() > 1) {
            // Should not happen (every check is done before the insert); isolate the culprit by
            // committing the requests one by one.
            log_->warn("group commit of {} requests failed ({}); retrying them one by one", batch.size(), e.what());
            for (auto& p : batch) {
                std::vector<Pending> one;
                one.push_back(std::move(p));
                process(one);
            }
            return;
        }
        // A single request the database refuses: bad input (e.g. \u0000 in a string, which jsonb
        // cannot hold), never retried.
        std::string w = e.what();
        if (auto nl = w.find('\n'); nl != std::string::npos) w.resize(nl);
        rejected_.inc();
        batch[0].cb(Error::make("invalid_event", "the database refused the event: " + w));
        return;
    }
    std::size_t nev = 0;
    auto now = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < batch.size(); ++i) {
        auto& r = results[i];
        if (r.ok()) {
            (r->created ? created_ : replayed_).inc();
            if (r->created) nev += r->events.size();
        } else {
            rejected_.inc();
        }
        append_seconds_.observe(std::chrono::duration<double>(now - batch[i].queued).count());
    }
    events_written_.inc(nev);
    batch_events_.observe(static_cast<double>(nev));
    batch_requests_.observe(static_cast<double>(batch.size()));
    if (!committed.empty()) {
        head_ = committed.back().position.value();
        if (listener_) listener_(committed);
    }
    for (std::size_t i = 0; i < batch.size(); ++i) batch[i].cb(std::move(results[i]));
}

namespace {

// What the decision needs to know about the log.
struct LogView {
    std::int64_t head = 0;
    std::int64_t last_ts_ms = 0;
    std::unordered_map<Uuid, events::Event> stored;          // stored events with ids of the group
    std::unordered_map<Uuid, std::size_t> accepted;          // index in `committed` of an id this group adds
    std::unordered_map<std::string, std::int64_t> versions;  // current version per aggregate
};

// Decides every request in memory, in queue order, as if each ran alone after the previous one.
// Returns false when a request would fail with version_conflict and `verified` is false: a
// conflict seen through a cache is re-checked against the database before it is reported.
// `committed` gets the accepted events without their data and metadata (no deep copy of them):
// `sources[k]` is the submitted event of committed[k], which the insert serialises and which is
// moved into it once the commit succeeded (see Writer::commit_batch).
bool decide(std::vector<AppendRequest*>& reqs, LogView& view, bool verified, std::vector<Result<AppendOutcome>>& results,
            std::vector<events::Event>& committed, std::vector<events::NewEvent*>& sources) {
    auto ts_ms = std::max<std::int64_t>(now_ms().time_since_epoch().count(), view.last_ts_ms);
    SysTime ts{std::chrono::milliseconds(ts_ms)};
    results.clear();
    committed.clear();
    sources.clear();
    view.accepted.clear();
    for (auto* rp : reqs) {
        const auto& req = *rp;
        std::size_t already = 0;
        std::optional<Error> conflict;
        AppendOutcome replay;
        replay.created = false;
        for (const auto& e : req.events) {
            if (!e.id) continue;
            bool same = false;
            const events::Event* stored = nullptr;
            if (auto a = view.accepted.find(*e.id); a != view.accepted.end()) {
                // An earlier request of this group adds it: same content as what it submitted.
                stored = &committed[a->second];
                const auto& s = *sources[a->second];
                same = e.type == s.type && e.aggregate_id == s.aggregate_id && e.data == s.data && e.metadata == s.metadata;
            } else if (auto it = view.stored.find(*e.id); it != view.stored.end()) {
                stored = &it->second;
                same = events::same_content(e, it->second);
            } else {
                continue;
            }
            if (!same) {
                conflict = Error::make("id_conflict", "event " + e.id->str() + " is already stored with different content");
                break;
            }
            ++already;
            replay.events.push_back(appended_of(*stored));
        }
        if (!conflict && already > 0 && already < req.events.size())
            conflict = Error::make("id_conflict",
                                   std::to_string(already) + " of the " + std::to_string(req.events.size()) +
                                       " events of this request are already stored; a request is stored whole or not at all");
        if (conflict) {
            results.emplace_back(std::move(*conflict));
            continue;
        }
        if (already == req.events.size()) {
            results.emplace_back(std::move(replay));
            continue;
        }
        auto& cur = view.versions[req.aggregate_id];
        if (req.expected_version && req.expected_version->value() != cur) {
            if (!verified) return false;
            auto expected = req.expected_version->value();
            auto err = Error::make("version_conflict", "aggregate '" + req.aggregate_id + "' holds " + std::to_string(cur) +
                                                           " events, the request expected " + std::to_string(expected));
            err.extra = {{"expected", expected}, {"actual", cur}};
            results.emplace_back(std::move(err));
            continue;
        }
        AppendOutcome out;
        for (auto& e : rp->events) {
            events::Event ev;
            ev.id = e.id ? *e.id : Uuid::v4();
            ev.type = e.type;
            ev.aggregate_id = e.aggregate_id;
            ev.version = AggregateVersion(++cur);
            ev.position = GlobalPosition(++view.head);
            ev.timestamp = ts;
            out.events.push_back(appended_of(ev));
            view.accepted.emplace(ev.id, committed.size());  // a later request of this group with the same id replays it
            committed.push_back(std::move(ev));
            sources.push_back(&e);
        }
        results.emplace_back(std::move(out));
    }
    view.last_ts_ms = ts_ms;
    return true;
}

// A string literal for a connection with standard_conforming_strings on (set in
// ensure_connection): only the quote is special. The text never holds NUL (refused at parse, and
// JSON text escapes control characters) and is valid UTF-8 (it was parsed as such).
void append_literal(std::string& out, std::string_view s) {
    out += '\'';
    for (auto q = s.find('\''); q != std::string_view::npos; q = s.find('\'')) {
        out.append(s.data(), q + 1);
        out += '\'';
        s.remove_prefix(q + 1);
    }
    out.append(s);
    out += '\'';
}

void append_number(std::string& out, std::int64_t v) {
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

// What the insert and the readers need of each accepted event, serialised once.
struct Rows {
    std::vector<std::string> data, metadata;
    std::string ts_text;  // decide() gives a whole group one timestamp
};

// Dumps each event's data and metadata once and makes its envelope text (the relay publishes it
// and the SSE streams send it as it is).
Rows serialise(std::vector<events::Event>& evs, const std::vector<events::NewEvent*>& sources) {
    Rows rows;
    rows.data.reserve(evs.size());
    rows.metadata.reserve(evs.size());
    if (!evs.empty()) rows.ts_text = format_rfc3339(evs.front().timestamp);
    for (std::size_t k = 0; k < evs.size(); ++k) {
        auto& ev = evs[k];
        rows.data.push_back(sources[k]->data.dump());
        rows.metadata.push_back(sources[k]->metadata.dump());
        ev.text = std::make_shared<const std::string>(ev.to_json_text(rows.data.back(), rows.metadata.back(), rows.ts_text));
    }
    return rows;
}

// A group this large is written with COPY: PostgreSQL ingests it at about half the CPU of a
// multi-row INSERT (11 against 22 us per row here), for two more round trips than the INSERT
// that rides with the lock, which small groups keep.
constexpr std::size_t kCopyMinEvents = 32;
bool use_copy(const std::vector<events::Event>& evs) { return evs.size() >= kCopyMinEvents; }

// The INSERT statements of the accepted events, in chunks; sent together they run as one
// transaction (a multi-statement simple query is atomic). Written into one buffer: building each
// row from temporaries and quoting through libpq took half of the insert's time.
std::string insert_sql(const std::vector<events::Event>& evs, const Rows& rows) {
    std::string sql;
    sql.reserve(evs.size() * 512);  // grows geometrically past that
    for (std::size_t i = 0; i < evs.size(); i += kInsertChunk) {
        sql += "INSERT INTO events (position, id, type, aggregate_id, aggregate_version, ts, data, metadata) VALUES ";
        auto end = std::min(evs.size(), i + kInsertChunk);
        for (std::size_t k = i; k < end; ++k) {
            const auto& ev = evs[k];
            if (k > i) sql += ',';
            sql += '(';
            append_number(sql, ev.position.value());
            sql += ",'";
            sql += ev.id.str();
            sql += "',";
            append_literal(sql, ev.type);
            sql += ',';
            append_literal(sql, ev.aggregate_id);
            sql += ',';
            append_number(sql, ev.version.value());
            sql += ",'";
            sql += rows.ts_text;
            sql += "',";
            append_literal(sql, rows.data[k]);
            sql += ',';
            append_literal(sql, rows.metadata[k]);
            sql += ')';
        }
        sql += ";";
    }
    return sql;
}

void copy_rows(pqxx::transaction_base& tx, const std::vector<events::Event>& evs, const Rows& rows) {
    pqxx::stream_to out(
        tx, "events",
        std::vector<std::string>{"position", "id", "type", "aggregate_id", "aggregate_version", "ts", "data", "metadata"});
    for (std::size_t k = 0; k < evs.size(); ++k) {
        const auto& ev = evs[k];
        out << std::make_tuple(ev.position.value(), ev.id.str(), ev.type, ev.aggregate_id, ev.version.value(), rows.ts_text,
                               rows.data[k], rows.metadata[k]);
    }
    out.complete();
}

// Writes the group inside `tx` (which holds the writers' lock): COPY for a large group.
void write_rows(pqxx::transaction_base& tx, const std::vector<events::Event>& evs, const Rows& rows) {
    if (use_copy(evs))
        copy_rows(tx, evs, rows);
    else
        tx.exec(insert_sql(evs, rows));
}

bool is_unique_violation(const std::exception& e) {
    auto* s = dynamic_cast<const pqxx::sql_error*>(&e);
    return s && s->sqlstate() == "23505";
}

}  // namespace

void Writer::forget_cache() {
    head_known_ = false;
    versions_.clear();
}

void Writer::remember(const std::vector<events::Event>& committed, std::int64_t last_ts_ms) {
    if (versions_.size() > kMaxCachedAggregates) versions_.clear();
    for (const auto& ev : committed) versions_[ev.aggregate_id] = ev.version.value();
    if (!committed.empty()) head_cache_ = committed.back().position.value();
    last_ts_ms_ = last_ts_ms;
}

// Fast path, one round trip in the common case: the head and the aggregates' versions come from
// what this writer committed itself, ids are not looked up, and the INSERT is sent on its own.
// The database still has the last word: if another store process wrote meanwhile, or an id is
// already stored, a unique constraint refuses the INSERT and the group takes the verified path.
// A position p+1 is only ever inserted by a writer that saw p committed, so commit order holds.
bool Writer::try_fast_commit(std::vector<AppendRequest*>& reqs, std::vector<Result<AppendOutcome>>& results,
                             std::vector<events::Event>& committed) {
    if (!head_known_) return false;
    LogView view;
    view.head = head_cache_;
    view.last_ts_ms = last_ts_ms_;
    std::string missing;
    for (auto* r : reqs) {
        auto it = versions_.find(r->aggregate_id);
        if (it != versions_.end()) {
            view.versions[r->aggregate_id] = it->second;
        } else if (!view.versions.count(r->aggregate_id)) {
            view.versions[r->aggregate_id] = 0;
            missing += (missing.empty() ? "" : ",") + conn_->quote(r->aggregate_id);
        }
    }
    if (!missing.empty()) {
        pqxx::nontransaction tx(*conn_);
        auto r = tx.exec(
            "SELECT a, coalesce((SELECT max(aggregate_version) FROM events WHERE aggregate_id = a), 0) "
            "FROM unnest(ARRAY[" +
            missing + "]::text[]) AS a");
        for (const auto& row : r) view.versions[row[0].c_str()] = versions_[row[0].c_str()] = row[1].as<std::int64_t>();
    }
    if (!decide(reqs, view, false, results, committed, sources_)) return false;
    if (!committed.empty()) {
        try {
            const auto rows = serialise(committed, sources_);
            const std::string lock = "SELECT pg_advisory_xact_lock(" + std::to_string(kWriterLock) + ")";
            if (use_copy(committed)) {
                pqxx::work tx(*conn_);
                tx.exec(lock);
                copy_rows(tx, committed, rows);
                tx.commit();
            } else {
                // The lock rides in the same implicit transaction: one round trip, and a verified
                // commit of another store process is never interleaved between its reads and insert.
                pqxx::nontransaction tx(*conn_);
                tx.exec(lock + ";" + insert_sql(committed, rows));
            }
        } catch (const std::exception& e) {
            if (!is_unique_violation(e)) throw;
            forget_cache();
            return false;
        }
    }
    remember(committed, view.last_ts_ms);
    return true;
}

// Verified path: under the writers' advisory lock, read the head, the stored events with the
// group's ids and the aggregates' versions, decide, insert, commit.
void Writer::verified_commit(std::vector<AppendRequest*>& reqs, std::vector<Result<AppendOutcome>>& results,
                             std::vector<events::Event>& committed) {
    pqxx::work tx(*conn_);
    tx.exec("SELECT pg_advisory_xact_lock(" + std::to_string(kWriterLock) + ")");
    LogView view;
    {
        auto r = tx.exec("SELECT position, (extract(epoch FROM ts) * 1000)::bigint FROM events ORDER BY position DESC LIMIT 1");
        if (!r.empty()) {
            view.head = r[0][0].as<std::int64_t>();
            view.last_ts_ms = std::max(last_ts_ms_, r[0][1].as<std::int64_t>());
        }
    }
    std::string ids, aggs;
    for (auto* r : reqs) {
        if (!view.versions.count(r->aggregate_id)) {
            view.versions[r->aggregate_id] = 0;
            aggs += (aggs.empty() ? "" : ",") + tx.quote(r->aggregate_id);
        }
        for (auto& e : r->events)
            if (e.id) ids += (ids.empty() ? "'" : ",'") + e.id->str() + "'";
    }
    if (!ids.empty()) {
        for (const auto& row : tx.exec(std::string("SELECT ") + rows::kColumns + " FROM events WHERE id IN (" + ids + ")")) {
            auto ev = rows::to_event(row);
            view.stored.emplace(ev.id, std::move(ev));
        }
    }
    for (const auto& row : tx.exec("SELECT a, coalesce((SELECT max(aggregate_version) FROM events WHERE aggregate_id = a), 0) "
                                   "FROM unnest(ARRAY[" +
                                   aggs + "]::text[]) AS a"))
        view.versions[row[0].c_str()] = row[1].as<std::int64_t>();
    auto versions_read = view.versions;
    auto head_read = view.head;
    decide(reqs, view, true, results, committed, sources_);
    if (!committed.empty()) write_rows(tx, committed, serialise(committed, sources_));
    tx.commit();
    // What was read under the lock is exact: refresh the cache with it.
    for (auto& [a, v] : versions_read) versions_[a] = v;
    head_cache_ = head_read;
    head_known_ = true;
    remember(committed, view.last_ts_ms);
}

void Writer::commit_batch(std::vector<Pending>& batch, std::vector<Result<AppendOutcome>>& results,
                          std::vector<events::Event>& committed) {
    std::vector<AppendRequest*> reqs;
    reqs.reserve(batch.size());
    for (auto& p : batch) reqs.push_back(&p.req);
    if (!try_fast_commit(reqs, results, committed)) verified_commit(reqs, results, committed);
    // Committed: the submitted events are not needed any more.
    for (std::size_t k = 0; k < committed.size(); ++k) {
        committed[k].data = std::move(sources_[k]->data);
        committed[k].metadata = std::move(sources_[k]->metadata);
    }
    sources_.clear();
}

}  // namespace engram::store
