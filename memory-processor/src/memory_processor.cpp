#include "memory_processor.h"

#include "engram/core/json.h"
#include "engram/events/event.h"
#include "engram/events/types.h"
#include "engram/http/client.h"
#include "engram/log/log.h"
#include "engram/nats/nats.h"
#include "engram/pg/pg.h"
#include "engram/projections/projections.h"
#include "engram/store/schema.h"

#include <algorithm>
#include <set>

namespace engram::memory_processor {

std::vector<std::string> handled_types() {
    std::set<std::string> t = {"MemoryStored"};
    for (const auto* p : projections::all())
        for (auto ty : p->event_types()) t.insert(std::string(ty));
    return {t.begin(), t.end()};
}

void migrate(pqxx::connection& c) {
    store::migrate(c);  // the log's schema, projection_state included
    memory::migrate(c);
}

namespace {

// The events of `aggregate` with versions from..to, from the store (to fill a hole left by a
// redelivery that arrives after later events of the same aggregate).
Result<std::vector<events::Event>> fetch_versions(const StoreAccess& store, const std::string& aggregate, std::int64_t from,
                                                  std::int64_t to) {
    http::ClientOptions co;
    co.response_limit = http::kStorePageResponseLimit;  // pages of up to 1000 events
    http::Client c(store.url, co);
    http::Headers h;
    if (!store.token.empty()) h.emplace_back("Authorization", "Bearer " + store.token);
    std::vector<events::Event> out;
    const std::int64_t first = from;
    while (from <= to) {
        auto n = std::min<std::int64_t>(1000, to - from + 1);
        auto r = c.get("/aggregates/" + http::url_encode(aggregate) + "/events?from_version=" + std::to_string(from) +
                           "&limit=" + std::to_string(n),
                       h);
        if (!r) return std::move(r).error();
        if (r->status != 200)
            return Error::make("event_store", "reading " + aggregate + " answered " + std::to_string(r->status));
        auto evs = r->json(events::kMaxStoreAnswerDepth)["events"];
        if (evs.empty()) break;
        for (auto& j : evs) {
            auto e = events::Event::from_json(j);
            if (!e) return std::move(e).error();
            out.push_back(std::move(*e));
        }
        from = out.back().version.value() + 1;
    }
    // Folding a partial answer would move the checkpoint past events never applied.
    if (static_cast<std::int64_t>(out.size()) != to - first + 1)
        return Error::make("event_store", "the store returned " + std::to_string(out.size()) + " of the versions " +
                                              std::to_string(first) + ".." + std::to_string(to) + " of " + aggregate);
    return out;
}

// Applies consecutive events of one aggregate (one, or a batch from the runtime) to one projection
// instance. The new state and its checkpoint (the position and aggregate version it reflects) are
// written in one transaction. Events at or below the checkpoint were applied already (handled again,
// or covered by a rebuild) and change nothing; a first event beyond the next version means earlier
// ones of this aggregate are missing here, so they are read from the store and folded first: the row
// never skips an event. The shared advisory lock lets `engram projections rebuild` (exclusive)
// replace the projection atomically. Fenced: an instance that lost the partition commits nothing,
// so a state folded from its stale view never overwrites the new owner's.
// An instance starts with its first event of a type the projection folds: a session that never
// schedules a reminder has no `reminders` row to rewrite on every message. (Its earlier events are
// then read back and folded like any gap, and change nothing.)
bool folds_any(const projections::Projection& p, const std::vector<processor::Context*>& cs) {
    auto types = p.event_types();
    return std::any_of(cs.begin(), cs.end(), [&](const processor::Context* c) {
        return std::find(types.begin(), types.end(), c->event().type) != types.end();
    });
}

Status apply_projection(const std::vector<processor::Context*>& cs, const projections::Projection& p, const StoreAccess& store) {
    auto& first = *cs.front();
    auto name = std::string(p.name());
    const auto& id = first.event().aggregate_id;
    auto r = first.db().run([&](pqxx::connection& c) -> Status {
        pqxx::work tx(c);
        // Fenced up front (a lost lease writes nothing and calls nothing), and again right before the
        // write: the first check's row lock is not held across the store calls below, so a slow store
        // cannot hold up the lease's renewal.
        if (!first.owns()) return Error::make("fenced", "the partition's lease is not held any more");
        tx.exec("SELECT pg_advisory_xact_lock_shared(hashtext(" + tx.quote("projection:" + name) + "))");
        auto row = tx.exec("SELECT state::text, position, version FROM projection_state WHERE name = " + tx.quote(name) +
                           " AND id = " + tx.quote(id) + " FOR UPDATE");
        nlohmann::json state = p.initial(id);
        std::int64_t version = 0, position = 0;
        if (!row.empty()) {
            state = nlohmann::json::parse(row[0][0].c_str());
            position = row[0][1].as<std::int64_t>();
            version = row[0][2].as<std::int64_t>();
        }
        if (row.empty() && !folds_any(p, cs)) return ok();
        std::vector<processor::Context*> todo;
        for (auto* ctx : cs)
            if (ctx->event().position.value() > position && ctx->event().version.value() > version) todo.push_back(ctx);
        if (todo.empty()) return ok();
        const auto& head = todo.front()->event();
        if (head.version.value() > version + 1) {
            // In slices: a long session's first reminder reads its whole history once, not into one vector.
            for (std::int64_t from = version + 1; from < head.version.value(); from += 1000) {
                auto missing = fetch_versions(store, id, from, std::min<std::int64_t>(from + 999, head.version.value() - 1));
                if (!missing) return std::move(missing).error();
                state = projections::fold_from(p, std::move(state), *missing);
            }
        }
        for (auto* ctx : todo) {
            const auto& ev = ctx->event();
            auto after = projections::fold_from(p, state, {ev});
            if (p.name() == "fast_memory" && projections::fast_memory_changed(state, after)) {
                // Appended before the commit: a crash in between re-derives the same event (same
                // deterministic id and content) when handled again, which the store stores once.
                events::NewEvent upd;
                upd.type = "FastMemoryUpdated";
                upd.aggregate_id = id;
                auto mems = nlohmann::json::array();
                for (const auto& m : after.value("memories", nlohmann::json::array()))
                    mems.push_back({{"memory_id", m.value("memory_id", "")}, {"text", m.value("text", "")}});
                upd.data = {{"user_id", after.value("user_id", id.substr(5))},
                            {"summary", projections::fast_memory_summary(after)},
                            {"memories", mems},
                            {"tokens", after.value("tokens", 0)},
                            {"position", ev.position.value()}};
                auto appended = ctx->append("fast_memory", std::move(upd));
                if (!appended) return std::move(appended).error();
            }
            state = std::move(after);
        }
        const auto& last = todo.back()->event();
        if (auto f = first.fence(tx); !f) return f;
        tx.exec("INSERT INTO projection_state (name, id, state, position, version) VALUES (" + tx.quote(name) + "," +
                tx.quote(id) + "," + tx.quote(state.dump()) + "," + std::to_string(last.position.value()) + "," +
                std::to_string(last.version.value()) +
                ") ON CONFLICT (name, id) DO UPDATE SET state = excluded.state, position = excluded.position, "
                "version = excluded.version, updated_at = now() "
                // A late handler (a stale instance) never moves a checkpoint backwards.
                "WHERE projection_state.version < excluded.version");
        tx.commit();
        return ok();
    });
    if (!r) return std::move(r).error();
    return *r;
}

Status index_memory(processor::Context& ctx, memory::Embedder& embedder) {
    const auto& ev = ctx.event();
    auto emb = embedder.embed(ev.data.value("text", ""));
    if (!emb) return std::move(emb).error();
    auto r = ctx.db().run([&](pqxx::connection& c) -> Status {
        pqxx::work tx(c);
        if (auto f = ctx.fence(tx); !f) return f;  // as apply_projection
        memory::index(tx, ev, *emb);
        tx.commit();
        return ok();
    });
    if (!r) return std::move(r).error();
    return *r;
}

// The events of one aggregate, in order (one, or a batch): every projection of that aggregate in
// one transaction each, then the memory index.
Status handle(const std::vector<processor::Context*>& cs, memory::Embedder& embedder, const StoreAccess& store) {
    const auto& agg_id = cs.front()->event().aggregate_id;
    for (const auto* p : projections::all()) {
        // Every event of an instance's aggregate moves its checkpoint, folded or not, so the
        // versions it has seen stay contiguous.
        auto agg = p->aggregate_of(agg_id);
        if (!agg || *agg != agg_id) continue;
        if (auto s = apply_projection(cs, *p, store); !s) return s;
    }
    for (auto* ctx : cs)
        if (ctx->event().type == "MemoryStored")
            if (auto s = index_memory(*ctx, embedder); !s) return s;
    return ok();
}

}  // namespace

processor::Handlers make_handlers(std::shared_ptr<memory::Embedder> embedder, StoreAccess store) {
    processor::Handlers h;
    h.one = [embedder, store](processor::Context& ctx) -> Status {
        std::vector<processor::Context*> one = {&ctx};
        return handle(one, *embedder, store);
    };
    // Up to a partition's queued events of one aggregate folded and committed at once: one
    // transaction per projection instead of one per event.
    h.batch = [embedder, store](const std::vector<processor::Context*>& cs) -> Status { return handle(cs, *embedder, store); };
    return h;
}

processor::Handler make_handler(std::shared_ptr<memory::Embedder> embedder, StoreAccess store) {
    return make_handlers(std::move(embedder), std::move(store)).one;
}

SearchService::SearchService(std::string nats_url, std::string database_url, std::shared_ptr<memory::Embedder> embedder)
    : nats_url_(std::move(nats_url)), db_(std::make_unique<pg::Pool>(database_url, 4)), embedder_(std::move(embedder)) {}

SearchService::~SearchService() {
    sub_.reset();
    nc_.reset();
}

Status SearchService::start() {
    nats::ConnectOptions o;
    o.url = nats_url_;
    o.name = "engram-memory-search";
    auto c = nats::Connection::connect(o);
    if (!c) return std::move(c).error();
    nc_ = std::move(*c);
    auto sub = nc_->subscribe(kSearchSubject, kSearchQueue, [this](const nats::Message& m, nats::Replier& reply) {
        nlohmann::json out;
        // From anyone on the bus: bounded like any outside input, and no U+0000 (the search is SQL).
        auto parsed = parse_json(m.data, "the request");
        auto req = parsed ? std::move(*parsed) : nlohmann::json();
        if (!parsed) {
            out = {{"error", "invalid_request"}, {"detail", parsed.error().detail}};
        } else if (!req.is_object() || !req.contains("user_id") || !req["user_id"].is_string() || !req.contains("query") ||
                   !req["query"].is_string() || find_nul(req)) {
            out = {{"error", "invalid_request"},
                   {"detail", "expected {\"user_id\": string, \"query\": string, \"limit\"?: int} without U+0000"}};
        } else {
            int limit = req.contains("limit") && req["limit"].is_number_integer() ? req["limit"].get<int>() : 5;
            limit = std::clamp(limit, 1, 50);
            // Memories live on the user's aggregate; accept "42" or "user:42".
            std::string user = req["user_id"].get<std::string>();
            if (user.rfind("user:", 0) == 0) user = user.substr(5);
            auto hits = memory::search(*db_, *embedder_, user, req["query"].get<std::string>(), limit);
            if (!hits) {
                out = {{"error", hits.error().code}, {"detail", hits.error().detail}};
            } else {
                out["results"] = nlohmann::json::array();
                for (auto& h : *hits)
                    out["results"].push_back({{"memory_id", h.memory_id},
                                              {"text", h.text},
                                              {"score", h.score},
                                              {"text_rank", h.text_rank},
                                              {"similarity", h.similarity}});
            }
        }
        if (reply.can_reply()) reply.reply(out.dump());
    });
    if (!sub) return std::move(sub).error();
    sub_ = std::move(*sub);
    return ok();
}

}  // namespace engram::memory_processor
