#include "app.h"
#include "sse.h"

#include "engram/core/uuid.h"
#include "engram/http/guard.h"
#include "engram/http/server.h"
#include "engram/log/log.h"
#include "engram/metrics/metrics.h"
#include "engram/nats/nats.h"
#include "engram/pg/pg.h"
#include "engram/projections/projections.h"
#include "engram/store/query.h"
#include "engram/store/fold.h"
#include "engram/store/reader.h"
#include "engram/store/relay.h"
#include "engram/store/writer.h"

namespace engram::event_store {

config::Spec config_spec() {
    config::Spec s;
    s.add({"DATABASE_URL", "PostgreSQL connection URL of the event log", "postgresql://postgres@127.0.0.1:55432/engram", false,
           config::url({"postgresql", "postgres"})});
    s.add({"NATS_URL", "NATS server with JetStream (the outbox relay publishes there)", "nats://127.0.0.1:54222", false,
           config::url({"nats", "tls"})});
    s.add({"EVENTS_STREAM", "JetStream stream the relay publishes to (subjects events.<type>.<partition>)", "EVENTS", false,
           nullptr});
    s.add({"NATS_STREAM_REPLICAS",
           "copies of the stream in a NATS JetStream cluster when the store creates it (1 for a single server, 3 for a "
           "three-node cluster); an existing stream is left as it is",
           "1", false, config::one_of({"1", "3", "5"})});
    s.add({"ENGRAM_PARTITIONS",
           "partitions of the stream (by aggregate id); processors lease them. Fixed for a deployment: recorded in the "
           "database by the first service that starts",
           "16", false, config::int_range(1, events::kMaxPartitions)});
    s.add({"EVENT_STORE_LISTEN", "host:port the event store listens on", "127.0.0.1:8080", false, config::listen_address()});
    s.add({"ENGRAM_API_TOKEN", "bearer token required on every request when set", "", false, nullptr, true});
    http::add_guard_settings(s);
    s.add({"EVENT_STORE_MAX_BATCH", "most events written by one group commit", "5000", false, config::int_range(1, 100000)});
    s.add({"EVENT_STORE_RELAY_LEASE_TTL_MS",
           "the relay lease (one publishing store process per database): a dead holder's is taken over after at most this",
           "5000", false, config::int_range(500, 600000)});
    s.add({"EVENT_STORE_COMMIT_TIMEOUT_MS",
           "a group commit not confirmed by the database within this time is cut and answered 503 (outcome unknown; retry "
           "with the same ids): a frozen primary, or one waiting for a synchronous standby that is gone",
           "10000", false, config::int_range(100, 600000)});
    s.add({"EVENT_STORE_HTTP_THREADS", "HTTP worker threads (read queries block one each)", "16", false,
           config::int_range(1, 512)});
    s.add({"EVENT_STORE_SSE_KEEPALIVE_MS", "interval of the keep-alive comment on event streams", "15000", false,
           config::int_range(10, 3600000)});
    s.add({"EVENT_STORE_DB_POOL", "PostgreSQL connections for reads", "8", false, config::int_range(1, 256)});
    s.add({"EVENT_STORE_MAX_CONNECTIONS", "open HTTP connections at most (one more: 503 overloaded)", "1024", false,
           config::int_range(1, 1000000)});
    s.add({"EVENT_STORE_SSE_MAX_STREAMS", "open event streams at most (one more: 503 too_many_streams)", "512", false,
           config::int_range(1, 1000000)});
    s.add({"EVENT_STORE_SSE_MAX_PER_CLIENT",
           "open event streams per remote address (one more: 429); keep it above the gateway's 256 web chat streams, "
           "which all come from the gateway's address",
           "320", false, config::int_range(1, 1000000)});
    config::add_logging(s);
    return s;
}

namespace {

int status_of(const std::string& code) {
    if (code == "unavailable") return 503;
    if (code == "id_conflict" || code == "version_conflict") return 409;
    if (code == "not_found") return 404;
    if (code == "unauthorized") return 401;
    if (code == "payload_too_large") return 413;
    if (code == "internal") return 500;
    return 400;
}

http::Response error_response(const Error& e) { return http::Response::error(status_of(e.code), e.code, e.detail, e.extra); }

nlohmann::json events_json(const std::vector<events::Event>& evs) {
    auto arr = nlohmann::json::array();
    for (const auto& e : evs) arr.push_back(e.to_json());
    return arr;
}

}  // namespace

struct App::Impl {
    config::Values cfg;
    std::shared_ptr<spdlog::logger> log = log::get("event-store");
    metrics::Registry metrics;
    pg::Pool pool;
    store::Reader reader{pool};
    store::Writer writer;
    std::unique_ptr<http::Server> server;
    std::unique_ptr<nats::Connection> nats;
    std::unique_ptr<store::Relay> relay;
    SseHub sse;
    http::Guard guard;

    explicit Impl(config::Values c)
        : cfg(std::move(c)),
          pool(cfg.get("DATABASE_URL"), static_cast<std::size_t>(cfg.get_int("EVENT_STORE_DB_POOL"))),
          writer(store::Writer::Options{cfg.get("DATABASE_URL"), static_cast<std::size_t>(cfg.get_int("EVENT_STORE_MAX_BATCH")),
                                        100000, std::chrono::milliseconds(200),
                                        std::chrono::milliseconds(cfg.get_int("EVENT_STORE_COMMIT_TIMEOUT_MS"))},
                 metrics),
          sse(reader, metrics, std::chrono::milliseconds(cfg.get_int("EVENT_STORE_SSE_KEEPALIVE_MS")),
              SseHub::Limits{static_cast<std::size_t>(cfg.get_int("EVENT_STORE_SSE_MAX_STREAMS")),
                             static_cast<std::size_t>(cfg.get_int("EVENT_STORE_SSE_MAX_PER_CLIENT"))}),
          guard(http::guard_options(cfg)) {}

    void handle(http::Request& req, const std::shared_ptr<http::Responder>& res) {
        const auto& path = req.path;
        if (auto refused = guard.check_host(req)) return res->respond(std::move(*refused));
        if (path == "/healthz" && req.method == "GET") return res->respond(http::Response::json(200, {{"status", "ok"}}));
        // Browsers' EventSource cannot set headers: a GET may carry ?access_token=.
        if (auto refused = guard.check_token(req, true)) return res->respond(std::move(*refused));
        if (path == "/events") {
            if (req.method == "POST") {
                if (auto refused = http::require_json(req)) return res->respond(std::move(*refused));
                return append(req, res);
            }
            if (req.method == "GET") return res->respond(read_events(req));
            return res->respond(method_not_allowed("GET, POST"));
        }
        if (req.method != "GET") return res->respond(method_not_allowed("GET"));
        if (path == "/readyz") return res->respond(ready());
        if (path == "/metrics") {
            http::Response r;
            r.content_type = "text/plain; version=0.0.4";
            r.body = metrics.render();
            return res->respond(std::move(r));
        }
        if (path == "/events/stream") return sse.serve(req, res);
        if (path.rfind("/events/", 0) == 0) return res->respond(get_event(path.substr(8)));
        if (path.rfind("/projections/", 0) == 0) return res->respond(projection(path.substr(13), req));
        const std::string agg_prefix = "/aggregates/", agg_suffix = "/events";
        if (path.rfind(agg_prefix, 0) == 0 && path.size() > agg_prefix.size() + agg_suffix.size() &&
            path.compare(path.size() - agg_suffix.size(), agg_suffix.size(), agg_suffix) == 0)
            return res->respond(
                aggregate_events(path.substr(agg_prefix.size(), path.size() - agg_prefix.size() - agg_suffix.size()), req));
        res->respond(http::Response::error(404, "not_found", "no route for " + req.method + " " + path));
    }

    static http::Response method_not_allowed(const std::string& allow) {
        auto r = http::Response::error(405, "method_not_allowed", "this path accepts " + allow);
        r.headers.emplace_back("Allow", allow);
        return r;
    }

    void append(http::Request& req, const std::shared_ptr<http::Responder>& res) {
        // Bounded: a body nested deeper than kMaxJsonDepth, or with a number out of range, is a 400
        // invalid_json before anything copies it.
        auto parsed = store::parse_append_body(req.body);
        if (!parsed) return res->respond(error_response(parsed.error()));
        if (auto fits = publishable(*parsed, req.body.size()); !fits) return res->respond(error_response(fits.error()));
        // Connected to an old primary that came back after a failover: what it accepts would be
        // lost (or fork the log), so nothing is.
        if (auto stale = relay ? relay->fenced() : std::nullopt)
            return res->respond(error_response(Error::make("unavailable", *stale)));
        writer.submit(std::move(*parsed), [res](Result<store::AppendOutcome> r) {
            if (!r) return res->respond(error_response(r.error()));
            res->respond(http::Response::text(r->created ? 201 : 200, store::outcome_text(*r), "application/json"));
        });
    }

    // Every accepted event must fit in one NATS message, or the relay could never publish it and
    // every later event would wait behind it.
    Status publishable(const store::AppendRequest& req, std::size_t body_bytes) const {
        std::int64_t limit = nats ? nats->max_payload() : 0;
        if (limit <= 0) limit = store::kDefaultMaxPayload;  // not learned yet: the server default
        // Re-serialising can lengthen a number at most ~4.3 times ("1E14" -> "100000000000000.0"), so
        // a body this small cannot be too large and needs no measuring.
        if (body_bytes * 5 + 1024 < static_cast<std::size_t>(limit)) return ok();
        for (const auto& e : req.events) {
            auto bytes = store::published_bytes_bound(e);
            if (static_cast<std::int64_t>(bytes) > limit)
                return Error{"payload_too_large",
                             fmt::format("the event would be {} bytes when published, over the NATS server's max_payload "
                                         "of {} bytes (raise max_payload in the nats-server config)",
                                         bytes, limit),
                             {{"limit", limit}, {"size", bytes}}};
        }
        return ok();
    }

    http::Response read_events(http::Request& req) {
        auto q = store::parse_read_query(req.query);
        if (!q) return error_response(q.error());
        auto evs = reader.read(*q);
        if (!evs) return error_response(evs.error());
        auto next = evs->empty() ? q->after : evs->back().position;
        return http::Response::json(200, {{"events", events_json(*evs)}, {"next_after", next.value()}});
    }

    http::Response get_event(const std::string& id_text) {
        auto id = Uuid::parse(id_text);
        if (!id) return http::Response::error(404, "not_found", "no event with id '" + id_text + "' (not a UUID)");
        auto ev = reader.get(*id);
        if (!ev) return error_response(ev.error());
        if (!*ev) return http::Response::error(404, "not_found", "no event with id " + id->str());
        return http::Response::json(200, (*ev)->to_json());
    }

    http::Response aggregate_events(const std::string& aggregate_id, http::Request& req) {
        auto q = store::parse_aggregate_query(req.query);
        if (!q) return error_response(q.error());
        auto evs = reader.aggregate(aggregate_id, q->from, q->limit);
        if (!evs) return error_response(evs.error());
        return http::Response::json(200, {{"aggregate_id", aggregate_id}, {"events", events_json(*evs)}});
    }

    // GET /projections/{name}/{id}[?as_of=P|TIME]: folded from the log by the projection's own
    // code when as_of is given, else the state the memory processor persisted.
    http::Response projection(const std::string& rest, http::Request& req) {
        auto slash = rest.find('/');
        if (slash == std::string::npos || slash + 1 >= rest.size())
            return http::Response::error(404, "not_found", "use /projections/{name}/{id}");
        auto name = rest.substr(0, slash), id = rest.substr(slash + 1);
        const auto* p = projections::find(name);
        if (!p) return http::Response::error(404, "not_found", "no projection named '" + name + "'");
        auto agg = p->aggregate_of(id);
        if (!agg) return error_response(agg.error());
        nlohmann::json out = {{"name", name}, {"id", id}};
        if (auto as_of = req.param("as_of")) {
            store::FoldScope scope;
            if (auto pos = store::parse_count(*as_of))
                scope.until_position = GlobalPosition(*pos);
            else if (auto t = parse_rfc3339(*as_of))
                scope.until_time = *t;
            else
                return http::Response::error(
                    400, "invalid_parameter",
                    "query parameter 'as_of' must be a position or an RFC 3339 time (got '" + *as_of + "')");
            auto folded = store::fold_as_of(pool, *p, id, scope);
            if (!folded) return error_response(folded.error());
            out["as_of"] = *as_of;
            out["state"] = std::move(folded->state);
            out["position"] = folded->position;
            return http::Response::json(200, out);
        }
        auto row = pool.run([&](pqxx::connection& c) -> std::optional<std::pair<std::string, std::int64_t>> {
            pqxx::read_transaction tx(c);
            auto exists = tx.exec("SELECT to_regclass('projection_state') IS NOT NULL")[0][0].as<bool>();
            if (!exists) return std::nullopt;
            auto r = tx.exec("SELECT state::text, position FROM projection_state WHERE name = " + tx.quote(name) +
                             " AND id = " + tx.quote(id));
            if (r.empty()) return std::nullopt;
            return std::make_pair(std::string(r[0][0].c_str()), r[0][1].as<std::int64_t>());
        });
        if (!row) return error_response(row.error());
        if (!*row)
            return http::Response::error(
                404, "not_found",
                "no persisted " + name + " for '" + id + "' (nothing processed yet; ?as_of=<position> folds it from the log)");
        out["position"] = (*row)->second;
        out["state"] = nlohmann::json::parse((*row)->first);
        return http::Response::json(200, out);
    }

    http::Response ready() {
        nlohmann::json checks;
        bool ok = true;
        auto db = reader.ping();
        checks["database"] = db ? "ok" : db.error().detail;
        ok = ok && db.ok() && writer.database_up();
        if (db.ok() && !writer.database_up()) checks["database"] = "reconnecting";
        bool nats_ok = nats && nats->connected();
        checks["nats"] = nats_ok ? "ok" : "disconnected";
        ok = ok && nats_ok;
        nlohmann::json rel = {
            {"active", relay && relay->active()}, {"published", relay ? relay->published().value() : 0}, {"lag", relay_lag()}};
        if (auto b = relay ? relay->blocked() : std::nullopt) {
            ok = false;
            checks["relay"] = fmt::format(
                "blocked at position {}: the event is {} bytes published, over the NATS server's max_payload of {} bytes",
                b->position.value(), b->bytes, b->max_payload);
            rel["blocked_position"] = b->position.value();
        }
        if (auto stale = relay ? relay->fenced() : std::nullopt) {
            ok = false;
            checks["relay"] = *stale;
        }
        return http::Response::json(ok ? 200 : 503, {{"status", ok ? "ready" : "not_ready"}, {"checks", checks}, {"relay", rel}});
    }

    // Events committed but not yet in the stream (0 when another store process relays).
    std::int64_t relay_lag() const {
        if (!relay || !relay->active()) return 0;
        return std::max<std::int64_t>(0, writer.head().value() - relay->published().value());
    }
};

App::App(config::Values cfg) : impl_(std::make_unique<Impl>(std::move(cfg))) {}
App::~App() { stop(); }

Status App::start() {
    auto& d = *impl_;
    // The partition of every aggregate depends on the count: all services of a deployment must
    // use the one recorded by the first that started.
    if (auto c = pg::connect(d.cfg.get("DATABASE_URL")); c) {
        auto want = d.cfg.get("ENGRAM_PARTITIONS");
        try {
            auto recorded = pg::record_setting(**c, "partitions", want);
            if (recorded != want)
                return Error::make("invalid_config", "ENGRAM_PARTITIONS is " + want +
                                                         " but this deployment's stream is partitioned " + recorded +
                                                         " ways (table engram_settings)");
        } catch (const std::exception& e) {
            d.log->warn("cannot check ENGRAM_PARTITIONS against the database yet: {}", e.what());
        }
    }
    auto hp = config::parse_listen(d.cfg.get("EVENT_STORE_LISTEN"));
    http::ServerOptions so;
    so.host = hp->host;
    so.port = hp->port;
    so.worker_threads = static_cast<int>(d.cfg.get_int("EVENT_STORE_HTTP_THREADS"));
    so.max_connections = static_cast<std::size_t>(d.cfg.get_int("EVENT_STORE_MAX_CONNECTIONS"));
    // An append never blocks (parse, validate, queue for the writer, answered from its thread): a
    // small one runs on the I/O thread that read it. Large bodies take a worker, so parsing a
    // megabyte never holds up the other connections of that I/O thread.
    so.run_inline = [](const http::Request& r) { return r.method == "POST" && r.path == "/events" && r.body.size() <= 16384; };
    d.server = std::make_unique<http::Server>(
        so, [this](http::Request& req, std::shared_ptr<http::Responder> res) { impl_->handle(req, res); });
    try {
        d.server->start();
    } catch (const std::exception& e) {
        return Error::make("listen", e.what());
    }
    nats::ConnectOptions no;
    no.url = d.cfg.get("NATS_URL");
    no.name = "engram-event-store";
    auto nc = nats::Connection::connect(no);
    if (!nc) return Error::make("nats", nc.error().detail);
    d.nats = std::move(*nc);
    store::Relay::Options ro;
    ro.database_url = d.cfg.get("DATABASE_URL");
    ro.stream = d.cfg.get("EVENTS_STREAM");
    ro.partitions = static_cast<int>(d.cfg.get_int("ENGRAM_PARTITIONS"));
    ro.replicas = static_cast<int>(d.cfg.get_int("NATS_STREAM_REPLICAS"));
    ro.lease_ttl = std::chrono::milliseconds(d.cfg.get_int("EVENT_STORE_RELAY_LEASE_TTL_MS"));
    d.relay = std::make_unique<store::Relay>(ro, *d.nats, d.metrics);
    d.writer.on_commit([this](const std::vector<events::Event>& evs) {
        impl_->relay->notify(evs);
        impl_->sse.publish(evs);
    });
    d.sse.start();
    d.writer.start();
    d.relay->start();
    d.metrics.gauge_fn("engram_log_head_position", "last committed position",
                       [this] { return static_cast<double>(impl_->writer.head().value()); });
    d.metrics.gauge_fn("engram_relay_lag_events", "committed events not yet published to JetStream",
                       [this] { return static_cast<double>(impl_->relay_lag()); });
    d.metrics.gauge_fn("engram_relay_published_position", "highest position known to be in the stream",
                       [this] { return static_cast<double>(impl_->relay->published().value()); });
    d.metrics.gauge_fn("engram_relay_blocked_position",
                       "position of an event too large for the NATS server's max_payload that holds the relay up (0 = none)",
                       [this] {
                           auto b = impl_->relay->blocked();
                           return b ? static_cast<double>(b->position.value()) : 0.0;
                       });
    d.metrics.gauge_fn("engram_nats_max_payload_bytes", "the NATS server's max_payload, as learned at connect (0 = not yet)",
                       [this] { return static_cast<double>(impl_->nats->max_payload()); });
    d.metrics.gauge_fn("engram_database_up", "1 when the writer is connected to PostgreSQL",
                       [this] { return impl_->writer.database_up() ? 1.0 : 0.0; });
    return ok();
}

void App::stop() {
    if (!impl_) return;
    if (impl_->server) impl_->server->stop();
    impl_->writer.stop();
    impl_->sse.stop();
    if (impl_->relay) impl_->relay->stop();
}

std::uint16_t App::port() const { return impl_->server ? impl_->server->port() : 0; }

std::string App::url() const {
    auto hp = config::parse_listen(impl_->cfg.get("EVENT_STORE_LISTEN"));
    return "http://" + hp->host + ":" + std::to_string(port());
}

}  // namespace engram::event_store
