// engram replay (time travel, folded locally) / projections list / projections rebuild.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>

#include <pqxx/pqxx>

#include "common.h"
#include "engram/store/schema.h"
#include "engram/core/time.h"
#include "engram/pg/pg.h"
#include "engram/projections/projections.h"

namespace engram::cli {
namespace {

std::string known_projections() {
    std::string s;
    for (const auto* p : projections::all()) s += (s.empty() ? "" : ", ") + std::string(p->name());
    return s;
}

const projections::Projection& projection_named(const std::string& name) {
    const auto* p = projections::find(name);
    if (!p) usage("unknown projection '" + name + "' (known: " + known_projections() + ")");
    return *p;
}

bool all_digits(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// One line describing a state: its top-level fields, arrays and objects by size.
std::string summarize(const nlohmann::json& state) {
    if (!state.is_object()) return short_json(state, 140);
    std::string s;
    for (auto it = state.begin(); it != state.end(); ++it) {
        if (it.key() == "id" || it.key() == "position") continue;
        std::string v;
        const auto& x = it.value();
        if (x.is_array())
            v = "[" + std::to_string(x.size()) + "]";
        else if (x.is_object())
            v = "{" + std::to_string(x.size()) + "}";
        else if (x.is_string())
            v = "\"" + truncate(one_line(x.get<std::string>()), 24) + "\"";
        else
            v = x.dump();
        s += (s.empty() ? "" : " ") + it.key() + "=" + v;
    }
    return truncate(s, 160);
}

struct ReplayOpts {
    std::string projection;
    std::string id;
    std::string as_of;
    bool steps = false;
};

int replay(const Globals& g, const ReplayOpts& o) {
    const auto& p = projection_named(o.projection);
    auto agg = p.aggregate_of(o.id);
    if (!agg) usage("bad id '" + o.id + "' for projection " + o.projection + ": " + one_line(agg.error().detail));
    if (!o.as_of.empty() && !all_digits(o.as_of) && !parse_rfc3339(o.as_of))
        usage("bad --as-of '" + o.as_of + "': a position (integer) or an RFC 3339 time (2026-11-22T10:00:00Z)");

    Store store(g);
    std::string filters;
    add_param(filters, "aggregate_id", *agg);
    add_param(filters, "until", o.as_of);
    std::vector<events::Event> evs;
    store.page_events(0, filters, [&](const nlohmann::json& j) {
        evs.push_back(parse_event(j));
        return true;
    });
    // The view, folded locally by the projection's own code (the same fold the store and processor run).
    nlohmann::json state = projections::fold(p, o.id, evs);
    const std::int64_t position = state.value("position", std::int64_t{0});

    nlohmann::json steps = nlohmann::json::array();
    if (o.steps) {
        nlohmann::json s = p.initial(o.id);
        if (!g.json) std::printf("%8s  %-24s  %-22s  %s\n", "POSITION", "TIME", "TYPE", "STATE AFTER");
        for (const auto& e : evs) {
            auto next = p.apply(s, e);
            bool folded = next != s;
            s = std::move(next);
            if (g.json) {
                steps.push_back({{"position", e.position.value()},
                                 {"id", e.id.str()},
                                 {"type", e.type},
                                 {"timestamp", format_rfc3339(e.timestamp)},
                                 {"folded", folded},
                                 {"state", s}});
            } else {
                std::printf("%8lld  %-24s  %-22s  %s\n", static_cast<long long>(e.position.value()),
                            format_rfc3339(e.timestamp).c_str(), truncate(e.type, 22).c_str(),
                            folded ? summarize(s).c_str() : "(not folded)");
            }
        }
        if (!g.json) std::printf("\n");
    }

    if (g.json) {
        nlohmann::json out = {{"name", p.name()},     {"id", o.id},           {"aggregate_id", *agg},
                              {"position", position}, {"events", evs.size()}, {"state", state}};
        if (!o.as_of.empty()) out["as_of"] = o.as_of;
        if (o.steps) out["steps"] = steps;
        std::printf("%s\n", out.dump(2).c_str());
        return 0;
    }
    std::printf("%s %s as of %s: position %lld (%zu events of %s)\n", std::string(p.name()).c_str(), o.id.c_str(),
                o.as_of.empty() ? "now" : o.as_of.c_str(), static_cast<long long>(position), evs.size(), agg->c_str());
    std::printf("%s\n", state.dump(2).c_str());
    return 0;
}

int list_projections(const Globals& g) {
    nlohmann::json out = nlohmann::json::array();
    Table t({"NAME", "EVENT TYPES"});
    for (const auto* p : projections::all()) {
        std::string types;
        nlohmann::json jt = nlohmann::json::array();
        for (auto ty : p->event_types()) {
            types += (types.empty() ? "" : ", ") + std::string(ty);
            jt.push_back(std::string(ty));
        }
        out.push_back({{"name", p->name()}, {"event_types", jt}});
        t.row({std::string(p->name()), types});
    }
    if (g.json)
        std::printf("%s\n", out.dump().c_str());
    else
        t.print(stdout);
    return 0;
}

std::unique_ptr<pqxx::connection> connect_db(const Globals& g, const char* what) {
    if (g.database_url.empty()) usage(std::string(what) + " needs the database: pass --database-url or set DATABASE_URL");
    auto c = pg::connect(g.database_url);
    if (!c) fail("cannot connect to the database: " + one_line(c.error().detail));
    return std::move(c).value();
}

void ensure_projection_table(pqxx::connection& c) {
    {
        pqxx::nontransaction tx(c);
        if (!tx.exec("SELECT to_regclass('events') IS NOT NULL")[0][0].as<bool>())
            fail("the database has no events table: --database-url must name the event store's database");
    }
    store::migrate(c);  // the store's schema owns projection_state (idempotent, locked)
}

int rebuild(const Globals& g, const std::string& name) {
    const auto& p = projection_named(name);
    auto conn = connect_db(g, "projections rebuild");
    Store store(g);
    auto started = std::chrono::steady_clock::now();
    try {
        ensure_projection_table(*conn);
        pqxx::work tx(*conn);
        // Exclusive: the live processor (shared lock per update) waits until we commit, then skips
        // every event at or below the positions written here and applies the ones after.
        tx.exec_params("SELECT pg_advisory_xact_lock(hashtext('projection:' || $1))", name);
        if (tx.exec("SELECT to_regclass('events') IS NOT NULL")[0][0].as<bool>() == false)
            fail("the database has no events table: --database-url must name the event store's database");
        const auto head = tx.exec("SELECT coalesce(max(position), 0) FROM events")[0][0].as<std::int64_t>();
        tx.exec_params("DELETE FROM projection_state WHERE name = $1", name);

        std::set<std::string, std::less<>> types;
        for (auto t : p.event_types()) types.emplace(t);
        std::map<std::string, bool, std::less<>> member;  // aggregate -> is an instance of p
        std::map<std::string, nlohmann::json, std::less<>> states;
        // The checkpoint of each instance: the last event of its aggregate up to the head, of any
        // type (the memory processor skips events at or below it and fills holes above it).
        std::map<std::string, std::pair<std::int64_t, std::int64_t>, std::less<>> checkpoint;
        std::int64_t read = 0, folded = 0;
        Progress bar("rebuild " + name, head, g.progress || stderr_is_tty());
        // The log is read straight from the store's database (keyset pages inside this
        // transaction, so exactly up to the head): no HTTP/JSON round trip per event, and `data`
        // is parsed only for the events the projection folds.
        for (std::int64_t last = 0; last < head;) {
            auto r = tx.exec(
                "SELECT position, aggregate_id, aggregate_version, type, id, "
                "(extract(epoch FROM ts) * 1000)::bigint, data::text, metadata::text FROM events "
                "WHERE position > " +
                std::to_string(last) + " AND position <= " + std::to_string(head) + " ORDER BY position LIMIT 5000");
            if (r.empty()) break;
            for (const auto& row : r) {
                ++read;
                auto pos = row[0].as<std::int64_t>();
                std::string agg = row[1].c_str();
                checkpoint[agg] = {pos, row[2].as<std::int64_t>()};
                if (!types.count(std::string_view(row[3].c_str()))) continue;
                auto m = member.find(agg);
                if (m == member.end()) {
                    auto a = p.aggregate_of(agg);
                    m = member.emplace(agg, a.ok() && *a == agg).first;
                }
                if (!m->second) continue;
                events::Event e;
                e.position = GlobalPosition(pos);
                e.aggregate_id = agg;
                e.version = AggregateVersion(row[2].as<std::int64_t>());
                e.type = row[3].c_str();
                e.id = *Uuid::parse(row[4].c_str());
                e.timestamp = SysTime(std::chrono::milliseconds(row[5].as<std::int64_t>()));
                e.data = nlohmann::json::parse(row[6].c_str());
                e.metadata = nlohmann::json::parse(row[7].c_str());
                auto it = states.find(agg);
                if (it == states.end()) it = states.emplace(agg, p.initial(agg)).first;
                auto next = p.apply(std::move(it->second), e);
                if (next.value("position", std::int64_t{0}) == e.position.value()) ++folded;
                it->second = std::move(next);
            }
            last = r[r.size() - 1][0].as<std::int64_t>();
            bar.update(last);
        }
        bar.update(head);
        bar.finish();
        for (const auto& [id, state] : states) {
            const auto& [position, version] = checkpoint[id];
            tx.exec_params(
                "INSERT INTO projection_state (name, id, state, position, version, updated_at) "
                "VALUES ($1, $2, $3::jsonb, $4, $5, now())",
                name, id, state.dump(), position, version);
        }
        tx.commit();
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        if (g.json) {
            std::printf("%s\n", nlohmann::json{{"name", name},
                                               {"instances", states.size()},
                                               {"events", folded},
                                               {"events_read", read},
                                               {"head", head},
                                               {"seconds", secs}}
                                    .dump()
                                    .c_str());
        } else {
            std::printf("rebuilt %s: %zu instances, %lld events folded (%lld events read up to position %lld) in %.2f s\n",
                        name.c_str(), states.size(), static_cast<long long>(folded), static_cast<long long>(read),
                        static_cast<long long>(head), secs);
        }
        return 0;
    } catch (const Failure&) {
        throw;
    } catch (const std::exception& e) {
        fail("rebuild of " + name + " failed, nothing changed: " + one_line(e.what()));
    }
}

}  // namespace

std::unique_ptr<pqxx::connection> connect_database(const Globals& g, const char* what) { return connect_db(g, what); }

void add_projection_commands(CLI::App& app, Globals& g, Action& action) {
    auto ro = std::make_shared<ReplayOpts>();
    auto* r = app.add_subcommand("replay", "time travel: fold an instance's events up to --as-of locally and print the state");
    r->add_option("projection", ro->projection, "projection name (see `engram projections list`)")->required();
    r->add_option("id", ro->id, "instance id (= its aggregate: session:<channel>:<id>, user:<id>)")->required();
    r->add_option("--as-of", ro->as_of, "a position, or an RFC 3339 time (default: now)");
    r->add_flag("--steps", ro->steps, "print each event folded and the state after it");
    r->callback([&g, &action, ro] { action = [&g, ro] { return replay(g, *ro); }; });

    auto* pr = app.add_subcommand("projections", "list or rebuild the persisted projections");
    pr->require_subcommand(1);
    auto* l = pr->add_subcommand("list", "the projections and the event types they fold");
    l->callback([&g, &action] { action = [&g] { return list_projections(g); }; });

    auto name = std::make_shared<std::string>();
    auto* rb = pr->add_subcommand("rebuild", "empty a persisted projection and replay it from the store (needs --database-url)");
    rb->add_option("name", *name, "projection name")->required();
    rb->callback([&g, &action, name] { action = [&g, name] { return rebuild(g, *name); }; });
}

}  // namespace engram::cli
