#include "engram/store/relay.h"

#include "engram/log/log.h"
#include "engram/metrics/metrics.h"
#include "engram/nats/nats.h"
#include "engram/core/uuid.h"
#include "engram/pg/pg.h"
#include "rows.h"

#include <cstdio>
#include <deque>

namespace engram::store {
namespace {

nats::StreamConfig stream_config(const Relay::Options& o) {
    nats::StreamConfig c;
    c.name = o.stream;
    c.subjects = {o.subject_prefix + ".>"};
    c.replicas = o.replicas;
    return c;
}

constexpr const char* kFenceHeader = "Engram-Relay-Fence";  // "<timeline>.<epoch>" of the publisher
constexpr std::size_t kMaxFresh = 50000;                    // committed events kept in memory for publishing

// A JSON string's dumped length, escapes included.
std::size_t dumped_size(const std::string& s) { return nlohmann::json(s).dump().size(); }

}  // namespace

std::size_t published_bytes_bound(const events::NewEvent& e) {
    // {"id":"<36>","type":..,"aggregate_id":..,"aggregate_version":<19>,"position":<19>,
    //  "timestamp":"<24>","data":..,"metadata":..}
    constexpr std::size_t kEnvelopeFixed = 200;
    return kEnvelopeFixed + dumped_size(e.type) + dumped_size(e.aggregate_id) + e.data.dump().size() + e.metadata.dump().size() +
           kPublishHeaderBytes;
}

namespace {
struct Fenced : std::runtime_error {
    Fenced(const std::string& why, bool stale) : std::runtime_error(why), stale_database(stale) {}
    bool stale_database;  // the database is on an older timeline than the stream's last publisher
};
}  // namespace

struct Relay::Impl {
    Options opts;
    nats::Connection& nats;
    std::shared_ptr<spdlog::logger> log = log::get("relay");
    metrics::Counter& published_total;
    metrics::Counter& failures;

    std::mutex mu;
    std::condition_variable cv;
    bool stopping = false;
    std::int64_t notified = 0;
    std::deque<events::Event> fresh;  // committed events not yet published, in position order
    std::thread thread;

    pg::Watchdog watchdog;  // before conn: a frozen database must not hold the relay for ever
    std::unique_ptr<pqxx::connection> conn;
    bool synced = false;
    // The fence of this process's messages: the database's timeline (a promotion starts a new,
    // higher one) and the lease epoch. Compared as a pair with what the stream's last message carries.
    std::int64_t timeline = 0, epoch = 0;
    std::string owner = Uuid::v4().str();
    std::chrono::steady_clock::time_point renewed{};
    std::optional<std::string> fenced;  // guarded by mu
    // The stream's last sequence. Each publish expects it (expected_last_seq), so a message lost in
    // a reconnect can never be overtaken by the next one. (Not expected_last_msg_id: the server
    // forgets the last msg id when it restarts after the duplicate window has passed.)
    std::uint64_t last_seq = 0;
    std::optional<Blocked> blocked;  // guarded by mu
    std::chrono::steady_clock::time_point blocked_logged{};
    // The watermark last written to relay_state, and when: written at most once a second while
    // busy and whenever the relay goes idle (a transaction per round cost PostgreSQL more than the
    // INSERT of the events it published; the stream's last message is the truth anyway).
    std::int64_t persisted = -1;
    std::chrono::steady_clock::time_point persisted_at{};

    Impl(Options o, nats::Connection& n, metrics::Registry& m)
        : opts(std::move(o)),
          nats(n),
          published_total(m.counter("engram_relay_published_total", "events published to JetStream by the relay")),
          failures(m.counter("engram_relay_failures_total", "relay rounds that failed and were retried")) {}
};

Relay::Relay(Options opts, nats::Connection& nats, metrics::Registry& metrics)
    : impl_(std::make_unique<Impl>(std::move(opts), nats, metrics)) {}

Relay::~Relay() { stop(); }

void Relay::start() {
    impl_->thread = std::thread([this] { run(); });
}

void Relay::stop() {
    {
        std::lock_guard lk(impl_->mu);
        impl_->stopping = true;
    }
    impl_->cv.notify_all();
    if (impl_->thread.joinable()) impl_->thread.join();
    active_ = false;
}

std::optional<std::string> Relay::fenced() const {
    std::lock_guard lk(impl_->mu);
    return impl_->fenced;
}

namespace {

std::pair<std::int64_t, std::int64_t> parse_fence(const std::string& h) {
    long long t = 0, e = 0;
    if (std::sscanf(h.c_str(), "%lld.%lld", &t, &e) != 2) return {0, 0};
    return {t, e};
}

}  // namespace

std::optional<Relay::Blocked> Relay::blocked() const {
    std::lock_guard lk(impl_->mu);
    return impl_->blocked;
}

void Relay::notify(const std::vector<events::Event>& committed) {
    if (committed.empty()) return;
    {
        std::lock_guard lk(impl_->mu);
        impl_->notified = std::max(impl_->notified, committed.back().position.value());
        // Only while this process relays: a standby would just accumulate them.
        if (active_.load() && impl_->fresh.size() + committed.size() <= kMaxFresh)
            for (const auto& e : committed) impl_->fresh.push_back(e.text_copy());
    }
    impl_->cv.notify_one();
}

// Finds where the stream really is: its last message names the last published event. The stream
// is the truth (a crash can happen after publishing and before persisting the watermark).
bool Relay::sync_with_stream() {
    auto& d = *impl_;
    if (auto s = d.nats.ensure_stream(stream_config(d.opts)); !s) {
        d.log->warn("cannot ensure stream {}: {}", d.opts.stream, s.error().detail);
        return false;
    }
    auto info = d.nats.stream_info(d.opts.stream);
    if (!info) {
        d.log->warn("cannot read stream {}: {}", d.opts.stream, info.error().detail);
        return false;
    }
    pqxx::work tx(*d.conn);
    auto persisted =
        tx.exec("SELECT coalesce((SELECT published FROM relay_state WHERE stream = " + tx.quote(d.opts.stream) + "), 0)")[0][0]
            .as<std::int64_t>();
    std::int64_t w = 0;
    d.last_seq = info->last_seq;
    std::optional<std::vector<nats::Message>> last;
    if (info->last_seq > 0 && info->messages > 0) {
        auto msgs = d.nats.get_stream_messages(d.opts.stream, info->last_seq, 1);
        if (msgs && !msgs->empty()) last = std::move(*msgs);
    }
    if (info->last_seq > 0 && !last) {
        // Purged, or its last message deleted: the stream cannot say where it is; trust the
        // persisted watermark and continue after it.
        d.log->warn("stream {} has no readable last message (purged?): continuing after the persisted watermark {}",
                    d.opts.stream, persisted);
        w = persisted;
    } else if (last) {
        auto msgs = &*last;
        auto theirs = parse_fence((*msgs)[0].headers[kFenceHeader]);
        if (theirs > std::make_pair(d.timeline, d.epoch)) {
            std::string why = theirs.first > d.timeline
                                  ? fmt::format(
                                        "stream {} was last written from database timeline {}, this database is on "
                                        "timeline {}: an old primary that came back? not publishing from it",
                                        d.opts.stream, theirs.first, d.timeline)
                                  : fmt::format(
                                        "stream {} was last written under relay epoch {}, this relay holds {}: "
                                        "another store took over",
                                        d.opts.stream, theirs.second, d.epoch);
            throw Fenced(why, theirs.first > d.timeline);
        }
        auto id = (*msgs)[0].headers["Nats-Msg-Id"];
        auto r = tx.exec("SELECT position FROM events WHERE id = " + tx.quote(id) + "::uuid");
        if (r.empty()) {
            d.log->error(
                "the last message of stream {} (msg id '{}') is not an event of this log; is another "
                "store publishing to it? relay paused",
                d.opts.stream, id);
            return false;
        }
        w = r[0][0].as<std::int64_t>();
    } else if (persisted > 0) {
        d.log->warn("stream {} is empty but {} events were published before: republishing from the start", d.opts.stream,
                    persisted);
    }
    tx.commit();
    if (w != persisted) d.log->info("relay resumes after position {} (persisted watermark {})", w, persisted);
    published_ = w;
    return true;
}

void Relay::block(const Blocked& b) {
    auto& d = *impl_;
    auto now = std::chrono::steady_clock::now();
    bool first;
    {
        std::lock_guard lk(d.mu);
        first = !d.blocked || d.blocked->position != b.position;
        d.blocked = b;
    }
    if (first || now - d.blocked_logged > std::chrono::minutes(1)) {
        d.blocked_logged = now;
        d.log->error(
            "relay blocked: the event at position {} is {} bytes published, over the NATS server's max_payload of {} bytes; "
            "no later event reaches stream {} until max_payload is raised (nats-server config) and the server restarted",
            b.position.value(), b.bytes, b.max_payload, d.opts.stream);
    }
}

void Relay::unblock() {
    auto& d = *impl_;
    std::lock_guard lk(d.mu);
    if (!d.blocked) return;
    d.log->info("relay unblocked: position {} published", d.blocked->position.value());
    d.blocked.reset();
}

void Relay::run() {
    auto& d = *impl_;
    // Idle: wake up as soon as something new is committed.
    auto wait = [&](std::chrono::milliseconds dur) {
        std::unique_lock lk(d.mu);
        d.cv.wait_for(lk, dur, [&] { return d.stopping || d.notified > published_.load(); });
        return !d.stopping;
    };
    // Back-off (standby, NATS down, a failed round): new commits must not cut it short, or the
    // relay would spin.
    auto pause = [&](std::chrono::milliseconds dur) {
        std::unique_lock lk(d.mu);
        d.cv.wait_for(lk, dur, [&] { return d.stopping; });
        return !d.stopping;
    };
    auto drop_connection = [&] {
        d.conn.reset();
        d.synced = false;
        if (active_.exchange(false)) d.log->info("relay inactive");
    };
    // Claims the lease when it is free, expired or already this process's; a claim bumps the epoch.
    auto claim = [&]() -> bool {
        auto guard = d.watchdog.arm(*d.conn, d.opts.lease_ttl);
        pqxx::work tx(*d.conn);
        // The connection commits asynchronously (the watermark); a claim must be durable and
        // replicated before this relay publishes under its epoch.
        tx.exec("SET LOCAL synchronous_commit = on");
        auto tl = tx.exec("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint")[0][0]
                      .as<std::int64_t>();
        auto r = tx.exec_params(
            "INSERT INTO relay_lease (stream, owner, epoch, expires_at) VALUES ($1, $2, 1, now() + $3 * interval '1 ms') "
            "ON CONFLICT (stream) DO UPDATE SET owner = excluded.owner, epoch = relay_lease.epoch + 1, "
            "expires_at = excluded.expires_at WHERE relay_lease.expires_at < now() OR relay_lease.owner = excluded.owner "
            "RETURNING epoch",
            d.opts.stream, d.owner, d.opts.lease_ttl.count());
        tx.commit();
        if (r.empty()) return false;
        d.timeline = tl;
        d.epoch = r[0][0].as<std::int64_t>();
        d.renewed = std::chrono::steady_clock::now();
        return true;
    };
    auto renew = [&]() -> bool {
        auto guard = d.watchdog.arm(*d.conn, d.opts.lease_ttl);
        pqxx::work tx(*d.conn);
        tx.exec("SET LOCAL synchronous_commit = on");
        auto r = tx.exec_params(
            "UPDATE relay_lease SET expires_at = now() + $4 * interval '1 ms' WHERE stream = $1 AND owner = $2 AND epoch = $3 "
            "RETURNING 1",
            d.opts.stream, d.owner, d.epoch, d.opts.lease_ttl.count());
        tx.commit();
        return !r.empty();
    };
    auto persist_watermark = [&](bool idle) {
        auto w = published_.load();
        if (w == d.persisted) return;
        if (!idle && std::chrono::steady_clock::now() - d.persisted_at < std::chrono::seconds(1)) return;
        auto guard = d.watchdog.arm(*d.conn, d.opts.lease_ttl);
        pqxx::work tx(*d.conn);
        // Only while this relay holds the lease: a relay that lost it must not move the watermark back.
        tx.exec_params(
            "INSERT INTO relay_state (stream, published) SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM relay_lease WHERE "
            "stream = $1 AND owner = $3 AND epoch = $4) ON CONFLICT (stream) DO UPDATE SET published = excluded.published",
            d.opts.stream, w, d.owner, d.epoch);
        tx.commit();
        d.persisted = w;
        d.persisted_at = std::chrono::steady_clock::now();
    };
    auto release = [&] {
        if (!d.conn || !active_.load()) return;
        try {
            auto guard = d.watchdog.arm(*d.conn, d.opts.lease_ttl);
            pqxx::work tx(*d.conn);
            tx.exec_params(
                "UPDATE relay_lease SET expires_at = now() - interval '1 s' WHERE stream = $1 AND owner = $2 AND epoch = $3",
                d.opts.stream, d.owner, d.epoch);
            tx.commit();
        } catch (const std::exception&) {}
    };

    for (;;) {
        {
            std::lock_guard lk(d.mu);
            if (d.stopping) break;
        }
        try {
            if (!d.conn) {
                auto c = pg::connect(d.opts.database_url);
                if (!c) {
                    if (!pause(d.opts.standby_retry)) break;
                    continue;
                }
                d.conn = std::move(*c);
                pqxx::nontransaction(*d.conn).exec(
                    "SET synchronous_commit = off");  // the watermark is re-derived from the stream anyway
            }
            if (!active_.load()) {
                if (!claim()) {  // another store process relays; stand by and take over if it dies
                    if (!pause(d.opts.standby_retry)) break;
                    continue;
                }
                active_ = true;
                d.synced = false;
                d.log->info("relay active: publishing to stream {} (timeline {}, epoch {})", d.opts.stream, d.timeline, d.epoch);
            } else if (std::chrono::steady_clock::now() - d.renewed > d.opts.lease_ttl / 3) {
                if (!renew()) {
                    d.log->warn("relay lease of stream {} lost (epoch {}): another store process relays", d.opts.stream, d.epoch);
                    active_ = false;
                    d.synced = false;
                    continue;
                }
                d.renewed = std::chrono::steady_clock::now();
            }
            if (std::chrono::steady_clock::now() - d.renewed > d.opts.lease_ttl * 3 / 4) {
                // Stalled past what a renewal covers: another process may hold the lease by now.
                active_ = false;
                d.synced = false;
                continue;
            }
            if (!d.nats.connected()) {
                d.synced = false;
                if (!pause(std::chrono::milliseconds(100))) break;
                continue;
            }
            if (!d.synced) {
                bool ok;
                try {
                    auto guard = d.watchdog.arm(*d.conn, d.opts.lease_ttl);
                    ok = sync_with_stream();
                } catch (const Fenced& f) {
                    if (f.stale_database) {
                        std::lock_guard lk(d.mu);
                        if (!d.fenced) d.log->error("relay fenced: {}", f.what());
                        d.fenced = f.what();
                    } else {
                        d.log->info("relay fenced: {}", f.what());
                    }
                    release();
                    active_ = false;
                    d.synced = false;
                    if (!pause(d.opts.standby_retry)) break;
                    continue;
                }
                {
                    std::lock_guard lk(d.mu);
                    d.fenced.reset();
                }
                if (!ok) {
                    d.failures.inc();
                    if (!pause(std::chrono::milliseconds(500))) break;
                    continue;
                }
                d.synced = true;
            }

            std::vector<events::Event> evs;
            {
                // The fast way: the events the writer just committed, when they continue the stream.
                std::lock_guard lk(d.mu);
                while (!d.fresh.empty() && d.fresh.front().position.value() <= published_.load()) d.fresh.pop_front();
                if (!d.fresh.empty() && d.fresh.front().position.value() == published_.load() + 1) {
                    while (!d.fresh.empty() && evs.size() < d.opts.batch &&
                           d.fresh.front().position.value() == published_.load() + 1 + static_cast<std::int64_t>(evs.size())) {
                        evs.push_back(std::move(d.fresh.front()));
                        d.fresh.pop_front();
                    }
                } else {
                    d.fresh.clear();  // a hole (other process, overflow, restart): read the log instead
                }
            }
            if (evs.empty()) {
                auto guard = d.watchdog.arm(*d.conn, d.opts.lease_ttl);
                pqxx::read_transaction tx(*d.conn);
                evs = rows::to_events(tx.exec(std::string("SELECT ") + rows::kColumns + " FROM events WHERE position > " +
                                              std::to_string(published_.load()) + " ORDER BY position LIMIT " +
                                              std::to_string(d.opts.batch)));
            }
            if (evs.empty()) {
                persist_watermark(true);
                if (!wait(d.opts.poll)) break;
                continue;
            }

            // Serialise the round; stop before the first event the server would refuse as too large.
            std::vector<std::string> bodies;
            bodies.reserve(evs.size());
            const std::int64_t limit = d.nats.max_payload();
            for (const auto& ev : evs) {
                auto body = ev.json_text();
                auto bytes = body.size() + kPublishHeaderBytes;
                if (limit > 0 && static_cast<std::int64_t>(bytes) > limit) {
                    if (bodies.empty()) {
                        block(Blocked{ev.position, bytes, limit});
                        if (!pause(std::chrono::seconds(5))) break;
                    }
                    break;
                }
                bodies.push_back(std::move(body));
            }
            if (bodies.empty()) continue;
            evs.resize(bodies.size());

            // Publish the round with a bounded window; each message must land right after its
            // predecessor (expected_last_seq; 0 means "no check", only for an empty stream).
            struct Round {
                std::atomic<std::size_t> ok{0}, failed{0};
                std::mutex mu;
                std::string first_error;
            };
            auto round = std::make_shared<Round>();
            std::size_t sent = 0;
            std::uint64_t expect = d.last_seq;
            const std::string fence = std::to_string(d.timeline) + "." + std::to_string(d.epoch);
            for (std::size_t i = 0; i < evs.size(); ++i) {
                const auto& ev = evs[i];
                nats::PublishOptions po;
                po.msg_id = ev.id.str();
                po.expected_last_seq = expect;
                po.headers["Engram-Position"] = std::to_string(ev.position.value());
                po.headers[kFenceHeader] = fence;
                auto s = d.nats.publish_async(d.opts.subject_prefix + "." + ev.type + "." +
                                                  std::to_string(events::partition_of(ev.aggregate_id, d.opts.partitions)),
                                              bodies[i], po, [round](const nats::PubAck& a) {
                                                  if (a.ok) {
                                                      round->ok++;
                                                  } else {
                                                      std::lock_guard lk(round->mu);
                                                      if (round->first_error.empty()) round->first_error = a.error;
                                                      round->failed++;
                                                  }
                                              });
                if (!s) {
                    std::lock_guard lk(round->mu);
                    if (round->first_error.empty()) round->first_error = s.error().detail;
                    break;
                }
                ++expect;
                ++sent;
            }
            auto done = d.nats.wait_publish_complete(std::chrono::seconds(10));
            if (sent == evs.size() && done && round->ok.load() == sent && round->failed.load() == 0) {
                published_ = evs.back().position.value();
                d.last_seq = expect;
                unblock();
                d.published_total.inc(sent);
                persist_watermark(false);
            } else {
                d.failures.inc();
                std::string why;
                {
                    std::lock_guard lk(round->mu);
                    why = round->first_error;
                }
                if (!done && why.empty()) why = done.error().detail;
                d.log->warn("publishing round failed ({} of {} acked): {}; resyncing with the stream", round->ok.load(),
                            evs.size(), why);
                d.synced = false;
                if (!pause(std::chrono::milliseconds(100))) break;
            }
        } catch (const std::exception& e) {
            if (!pg::is_connection_error(e))
                d.log->error("relay error: {}", e.what());
            else
                d.log->warn("relay lost the database: {}", e.what());
            d.failures.inc();
            drop_connection();
            if (!pause(std::chrono::milliseconds(200))) break;
        }
    }
    if (d.conn && active_.load()) {
        try {
            persist_watermark(true);
        } catch (const std::exception&) {}
    }
    release();
    drop_connection();
}

}  // namespace engram::store
