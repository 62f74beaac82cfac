// engram replay (time travel, folded locally) / projections list / projections rebuild.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <condition_variable>
#include <deque>
#include <exception>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <pqxx/pqxx>

#include "common.h"
#include "engram/store/fold.h"
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
    // A fork's conversation is its origin's up to the fork position, then its own: shown composed.
    std::size_t inherited = 0;
    if (&p == &projections::conversation() && !evs.empty() && projections::fork_origin(evs.front())) {
        auto history = projections::inherited_history(evs.front(), session_reader(store));
        if (!history) fail("reading the origins of " + o.id + ": " + one_line(history.error().detail));
        for (const auto& seg : *history) inherited += seg.events.size();
        history->push_back({o.id, evs});
        state = projections::conversation_view(*history);
    }

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
        if (inherited) out["inherited_events"] = inherited;
        if (!o.as_of.empty()) out["as_of"] = o.as_of;
        if (o.steps) out["steps"] = steps;
        std::printf("%s\n", out.dump(2).c_str());
        return 0;
    }
    std::printf("%s %s as of %s: position %lld (%zu events of %s", std::string(p.name()).c_str(), o.id.c_str(),
                o.as_of.empty() ? "now" : o.as_of.c_str(), static_cast<long long>(position), evs.size(), agg->c_str());
    if (inherited) std::printf(", and %zu inherited from its origins", inherited);
    std::printf(")\n");
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

// The log's pages of a rebuild, read on a second connection in the rebuild's own snapshot while
// the caller folds the previous ones (PostgreSQL scanning and folding overlap on two cores).
// Bounded: at most kAhead pages wait.
class PageReader {
public:
    PageReader(const std::string& database_url, std::string snapshot, const projections::Projection& p, store::FoldScope scope)
        : thread_([this, database_url, snapshot = std::move(snapshot), &p, scope] { run(database_url, snapshot, p, scope); }) {}
    ~PageReader() {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    // The next page, or nullopt when the pages are done (then checkpoints() holds the last query).
    std::optional<pqxx::result> next() {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return !pages_.empty() || done_; });
        if (error_) std::rethrow_exception(error_);
        if (pages_.empty()) return std::nullopt;
        auto r = std::move(pages_.front());
        pages_.pop_front();
        cv_.notify_all();
        return r;
    }
    const pqxx::result& checkpoints() const { return checkpoints_; }

private:
    static constexpr std::size_t kAhead = 4;
    struct Stopped {};

    void run(const std::string& url, const std::string& snapshot, const projections::Projection& p,
             const store::FoldScope& scope) {
        try {
            auto c = pg::connect(url);
            if (!c) throw std::runtime_error("cannot connect to the database: " + c.error().detail);
            pqxx::transaction<pqxx::isolation_level::repeatable_read, pqxx::readwrite_policy::read_only> tx(**c);
            tx.exec("SET TRANSACTION SNAPSHOT " + tx.quote(snapshot));
            store::scan_fold_rows(tx, p, scope, [&](pqxx::result&& r) {
                std::unique_lock lk(mu_);
                cv_.wait(lk, [&] { return pages_.size() < kAhead || stop_; });
                if (stop_) throw Stopped{};
                pages_.push_back(std::move(r));
                cv_.notify_all();
            });
            auto cp = tx.exec(store::checkpoints_sql(tx, scope));
            std::lock_guard lk(mu_);
            checkpoints_ = std::move(cp);
            done_ = true;
        } catch (const Stopped&) {
            return;
        } catch (...) {
            std::lock_guard lk(mu_);
            error_ = std::current_exception();
            done_ = true;
        }
        cv_.notify_all();
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<pqxx::result> pages_;
    pqxx::result checkpoints_;
    bool done_ = false, stop_ = false;
    std::exception_ptr error_;
    std::thread thread_;
};

int rebuild(const Globals& g, const std::string& name) {
    const auto& p = projection_named(name);
    auto conn = connect_db(g, "projections rebuild");
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
        const auto snapshot = tx.exec("SELECT pg_export_snapshot()")[0][0].as<std::string>();
        tx.exec_params("DELETE FROM projection_state WHERE name = $1", name);

        store::FoldScope scope;
        scope.until_position = GlobalPosition(head);
        // Never destroyed: the process ends right after, and freeing every state's DOM node by node
        // took a seventh of a rebuild. Reachable through a static, so leak checkers stay quiet.
        static store::FoldState* kept = nullptr;
        kept = new store::FoldState(p);
        store::FoldState& fs = *kept;
        Progress bar("rebuild " + name, head, g.progress || stderr_is_tty());
        {
            // Straight from the store's database: no HTTP/JSON round trip per event, only the types
            // the projection folds, `data` parsed for those alone.
            PageReader pages(g.database_url, snapshot, p, scope);
            while (auto page = pages.next()) bar.update(fs.add(*page));
            fs.set_checkpoints(pages.checkpoints());
        }
        bar.update(head);
        bar.finish();
        // COPY, not an INSERT per instance; the next chunk of states is serialised on another
        // thread while this one escapes and sends the current one.
        {
            std::vector<const store::FoldState::Instances::value_type*> items;
            items.reserve(fs.instances().size());
            for (const auto& kv : fs.instances()) items.push_back(&kv);
            constexpr std::size_t kChunk = 128;
            auto dump = [&items](std::size_t from) {
                std::vector<std::string> out;
                for (std::size_t i = from; i < std::min(items.size(), from + kChunk); ++i)
                    out.push_back(items[i]->second.state.dump());
                return out;
            };
            pqxx::stream_to out(tx, "projection_state", std::vector<std::string>{"name", "id", "state", "position", "version"});
            auto next = std::async(std::launch::async, dump, 0);
            for (std::size_t from = 0; from < items.size(); from += kChunk) {
                auto texts = next.get();
                if (from + kChunk < items.size()) next = std::async(std::launch::async, dump, from + kChunk);
                for (std::size_t i = 0; i < texts.size(); ++i) {
                    const auto& [id, inst] = *items[from + i];
                    out << std::make_tuple(name, id, texts[i], inst.position, inst.version);
                }
            }
            out.complete();
        }
        tx.commit();
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        if (g.json) {
            std::printf("%s\n", nlohmann::json{{"name", name},
                                               {"instances", fs.instances().size()},
                                               {"events", fs.folded()},
                                               {"events_read", fs.rows()},
                                               {"head", head},
                                               {"seconds", secs}}
                                    .dump()
                                    .c_str());
        } else {
            std::printf("rebuilt %s: %zu instances, %lld events folded (%lld events read up to position %lld) in %.2f s\n",
                        name.c_str(), fs.instances().size(), static_cast<long long>(fs.folded()),
                        static_cast<long long>(fs.rows()), static_cast<long long>(head), secs);
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
