// engram events tail / events get / append.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <thread>

#include "common.h"
#include "engram/core/glob.h"
#include "engram/core/time.h"
#include "engram/core/uuid.h"
#include "engram/http/url.h"

namespace engram::cli {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_sigint(int) { g_interrupted = 1; }

void install_sigint() {
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

void print_event_row(const events::Event& e, const nlohmann::json& raw) {
    std::printf("%8lld  %-24s  %-22s  %-28s  %s\n", static_cast<long long>(e.position.value()),
                format_rfc3339(e.timestamp).c_str(), truncate(e.type, 22).c_str(), truncate(e.aggregate_id, 28).c_str(),
                short_json(raw.value("data", nlohmann::json::object()), 60).c_str());
}

struct TailOpts {
    bool follow = false;
    std::string type;
    std::string aggregate;
    std::int64_t after = 0;
    std::int64_t limit = 0;  // 0 = no limit
};

int tail(const Globals& g, const TailOpts& o) {
    if (!o.type.empty() && !glob_valid(o.type)) usage("bad --type '" + o.type + "': a type name or a prefix ending in '*'");
    Store store(g);
    std::string filters;
    add_param(filters, "type", o.type);
    add_param(filters, "aggregate_id", o.aggregate);
    if (o.follow) install_sigint();

    std::int64_t printed = 0;
    std::int64_t after = o.after;
    bool header_due = !g.json;  // printed once the store has answered
    auto limit_reached = [&] { return o.limit > 0 && printed >= o.limit; };
    auto one_pass = [&] {
        for (;;) {
            if (limit_reached() || g_interrupted) return;
            std::int64_t page = 1000;
            if (o.limit > 0) page = std::min<std::int64_t>(page, o.limit - printed);
            auto body = store.get("/events?after=" + std::to_string(after) + "&limit=" + std::to_string(page) + filters);
            const auto& evs = (*body)["events"];
            if (!evs.is_array()) fail("unexpected answer from the event store: no events array");
            if (header_due) {
                std::printf("%8s  %-24s  %-22s  %-28s  %s\n", "POSITION", "TIME", "TYPE", "AGGREGATE", "DATA");
                header_due = false;
            }
            for (const auto& j : evs) {
                auto e = parse_event(j);
                after = e.position.value();
                if (g.json)
                    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
                else
                    print_event_row(e, j);
                ++printed;
            }
            // The filters may skip many positions: continue after what the store scanned.
            if (body->contains("next_after") && (*body)["next_after"].is_number_integer())
                after = std::max(after, (*body)["next_after"].get<std::int64_t>());
            std::fflush(stdout);
            if (static_cast<std::int64_t>(evs.size()) < page) return;
        }
    };
    try {
        one_pass();
        while (o.follow && !limit_reached() && !g_interrupted) {
            for (int i = 0; i < 10 && !g_interrupted; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
            if (g_interrupted) break;
            one_pass();
        }
    } catch (const Failure&) {
        if (g_interrupted) return 0;  // a request cut short by Ctrl-C
        throw;
    }
    std::fflush(stdout);
    return 0;
}

int get_event(const Globals& g, const std::string& id) {
    auto uuid = Uuid::parse(id);
    if (!uuid) usage("bad event id '" + id + "': expected a UUID");
    Store store(g);
    auto body = store.get("/events/" + uuid->str(), /*allow_404=*/true);
    if (!body) fail("no event " + id);
    if (g.json) {
        std::printf("%s\n", body->dump(2).c_str());
        return 0;
    }
    auto e = parse_event(*body);
    Table t({"FIELD", "VALUE"});
    t.row({"id", e.id.str()});
    t.row({"type", e.type});
    t.row({"aggregate_id", e.aggregate_id});
    t.row({"aggregate_version", std::to_string(e.version.value())});
    t.row({"position", std::to_string(e.position.value())});
    t.row({"timestamp", format_rfc3339(e.timestamp)});
    t.print(stdout);
    std::printf("data:\n%s\nmetadata:\n%s\n", e.data.dump(2).c_str(), e.metadata.dump(2).c_str());
    return 0;
}

struct AppendOpts {
    std::string type;
    std::string aggregate;
    std::string data = "{}";
    std::string metadata = "{}";
    std::string id;
    std::int64_t expected_version = -1;  // -1 = not given
};

nlohmann::json parse_object(const std::string& flag, const std::string& text) {
    // The object becomes the event's data or metadata, one level below the top of the body.
    auto j = parse_json(text, flag, kMaxJsonDepth - 1);
    if (!j) usage("bad " + flag + ": " + j.error().detail);
    if (!j->is_object()) usage("bad " + flag + ": must be a JSON object");
    return std::move(*j);
}

int append(const Globals& g, const AppendOpts& o) {
    nlohmann::json body = {{"type", o.type},
                           {"aggregate_id", o.aggregate},
                           {"data", parse_object("--data", o.data)},
                           {"metadata", parse_object("--metadata", o.metadata)}};
    if (!o.id.empty()) {
        auto u = Uuid::parse(o.id);
        if (!u) usage("bad --id '" + o.id + "': expected a UUID");
        body["id"] = u->str();
    }
    if (o.expected_version >= 0) body["expected_version"] = o.expected_version;
    Store store(g);
    int status = 0;
    auto res = store.post("/events", body, &status);
    const auto& evs = res["events"];
    if (!evs.is_array() || evs.empty()) fail("unexpected answer from the event store: no events");
    const auto& e = evs[0];
    if (g.json) {
        nlohmann::json out = e;
        out["created"] = status == 201;
        std::printf("%s\n", out.dump().c_str());
        return 0;
    }
    std::printf("%s %s: position %lld, version %lld, at %s\n", status == 201 ? "appended" : "already stored",
                e.value("id", std::string()).c_str(), static_cast<long long>(e.value("position", 0LL)),
                static_cast<long long>(e.value("aggregate_version", 0LL)), e.value("timestamp", std::string()).c_str());
    return 0;
}

}  // namespace

void add_events_commands(CLI::App& app, Globals& g, Action& action) {
    auto* ev = app.add_subcommand("events", "read the event log");
    ev->require_subcommand(1);

    auto to = std::make_shared<TailOpts>();
    auto* t = ev->add_subcommand("tail", "print events in position order (paging GET /events); --follow keeps polling");
    t->add_flag("-f,--follow", to->follow, "keep polling for new events (every 500 ms) until interrupted");
    t->add_option("--type", to->type, "type filter: a name or a prefix ending in '*' (Message*)");
    t->add_option("--aggregate", to->aggregate, "only this aggregate (e.g. session:web:1)");
    t->add_option("--after", to->after, "start after this position (exclusive)")->check(CLI::NonNegativeNumber);
    t->add_option("--limit", to->limit, "print at most N events")->check(CLI::PositiveNumber);
    t->callback([&g, &action, to] { action = [&g, to] { return tail(g, *to); }; });

    auto id = std::make_shared<std::string>();
    auto* gt = ev->add_subcommand("get", "print one event (pretty JSON with --json, else a table)");
    gt->add_option("id", *id, "event id (UUID)")->required();
    gt->callback([&g, &action, id] { action = [&g, id] { return get_event(g, *id); }; });

    auto ao = std::make_shared<AppendOpts>();
    auto* ap = app.add_subcommand("append", "append one event (POST /events)");
    ap->add_option("--type", ao->type, "event type (PascalCase)")->required();
    ap->add_option("--aggregate", ao->aggregate, "aggregate id (session:<channel>:<id>, user:<id>...)")->required();
    ap->add_option("--data", ao->data, "data, a JSON object")->capture_default_str();
    ap->add_option("--metadata", ao->metadata, "metadata, a JSON object")->capture_default_str();
    ap->add_option("--id", ao->id, "event id (UUID): makes the append idempotent");
    ap->add_option("--expected-version", ao->expected_version,
                   "number of events the aggregate must hold now (0 = must not exist)")
        ->check(CLI::NonNegativeNumber);
    ap->callback([&g, &action, ao] { action = [&g, ao] { return append(g, *ao); }; });
}

}  // namespace engram::cli
