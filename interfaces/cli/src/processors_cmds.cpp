// engram processors: the distributed processors' membership and partition leases, read straight
// from the runtime's tables (processor_members, processor_leases, engram_settings).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <map>
#include <optional>

#include <pqxx/pqxx>

#include "common.h"

namespace engram::cli {

std::unique_ptr<pqxx::connection> connect_database(const Globals& g, const char* what);

namespace {

// Field names are a documented interface (the command's help, docs/operations.md): add, never rename.
constexpr const char* kHelp = R"(Reads processor_members, processor_leases and engram_settings from --database-url.

Per processor: a summary line (live instances, partitions held / total, messages pending), its
members (live, or gone once their row expired) and every partition 0..P-1 with its lease.

--json prints one document:
  {"now": database time, "partitions": P (engram_settings, null when not recorded),
   "processors": [{"name", "instances" (live members), "owned" (partitions held), "pending" (sum),
     "members": [{"member" (uuid), "live" (bool), "host", "pid", "listen", "started_at",
                  "heartbeat_at", "expires_at", "partitions" (held, ascending)}],
     "leases": [{"partition", "state" ("held" | "free" | "expired"), "owner" (uuid or null),
                 "epoch", "expires_at" (or null), "checkpoint" (stream sequence), "position"
                 (event position), "pending", "updated_at" (null for a partition without a row)}]}]}
Times are ISO-8601 UTC with milliseconds. Before any processor started: "processors": [].)";

// Timestamps as the rest of the CLI prints them, computed by the server so every value (and
// `now`) comes from one clock.
std::string iso(const std::string& column) {
    return "to_char(" + column + " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";
}

struct Member {
    std::string id, host, listen, started_at, heartbeat_at, expires_at;
    int pid = 0;
    bool live = false;
    double heartbeat_age = 0;
    std::vector<int> partitions;
};

struct Lease {
    int partition = 0;
    std::optional<std::string> owner, expires_at, updated_at;
    std::string state = "free";
    std::int64_t epoch = 0, checkpoint = 0, position = 0, pending = 0;
    double age = 0;
};

struct Processor {
    std::vector<Member> members;
    std::map<int, Lease> leases;
};

std::optional<std::string> opt(const pqxx::field& f) {
    if (f.is_null()) return std::nullopt;
    return std::string(f.c_str());
}

std::string age(double secs) {
    secs = std::max(secs, 0.0);
    char buf[32];
    auto s = static_cast<long long>(secs);
    if (secs < 10)
        std::snprintf(buf, sizeof buf, "%.1fs ago", secs);
    else if (s < 60)
        std::snprintf(buf, sizeof buf, "%llds ago", s);
    else if (s < 3600)
        std::snprintf(buf, sizeof buf, "%lldm%02llds ago", s / 60, s % 60);
    else if (s < 86400)
        std::snprintf(buf, sizeof buf, "%lldh%02lldm ago", s / 3600, s % 3600 / 60);
    else
        std::snprintf(buf, sizeof buf, "%lldd ago", s / 86400);
    return buf;
}

// "0-3,7" for {0,1,2,3,7}.
std::string ranges(const std::vector<int>& ps) {
    std::string out;
    for (std::size_t i = 0; i < ps.size();) {
        std::size_t j = i;
        while (j + 1 < ps.size() && ps[j + 1] == ps[j] + 1) ++j;
        out += (out.empty() ? "" : ",") + std::to_string(ps[i]);
        if (j > i) out += "-" + std::to_string(ps[j]);
        i = j + 1;
    }
    return out;
}

std::string short_id(const std::string& uuid) { return uuid.substr(0, 8); }

// Keys in the order the help lists them, for a reader of the raw document.
using Json = nlohmann::ordered_json;

Json or_null(const std::optional<std::string>& s) { return s ? Json(*s) : Json(); }

int show_processors(const Globals& g, const std::string& only) {
    auto conn = connect_database(g, "processors");
    std::string now;
    std::optional<int> partitions;
    bool tables = false;
    std::map<std::string, Processor> procs;
    try {
        // One snapshot: members, leases and `now` agree with each other.
        pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(*conn);
        auto head = tx.exec(
            "SELECT to_regclass('processor_members') IS NOT NULL AND to_regclass('processor_leases') IS NOT NULL, "
            "to_regclass('engram_settings') IS NOT NULL, " +
            iso("now()"));
        tables = head[0][0].as<bool>();
        now = head[0][2].c_str();
        if (head[0][1].as<bool>()) {
            auto r = tx.exec("SELECT value FROM engram_settings WHERE key = 'partitions'");
            if (!r.empty()) {
                const std::string v = r[0][0].c_str();
                int p = 0;
                auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), p);
                if (ec == std::errc() && end == v.data() + v.size() && p > 0) partitions = p;
            }
        }
        if (tables) {
            for (const auto& r : tx.exec_params("SELECT processor, member::text, host, pid, listen, " + iso("started_at") + ", " +
                                                    iso("heartbeat_at") + ", " + iso("expires_at") +
                                                    ", expires_at > now(), extract(epoch FROM now() - heartbeat_at)::float8 "
                                                    "FROM processor_members WHERE ($1 = '' OR processor = $1) "
                                                    "ORDER BY processor, expires_at > now() DESC, started_at, member",
                                                only)) {
                Member m;
                m.id = r[1].c_str();
                m.host = r[2].c_str();
                m.pid = r[3].as<int>();
                m.listen = r[4].c_str();
                m.started_at = r[5].c_str();
                m.heartbeat_at = r[6].c_str();
                m.expires_at = r[7].c_str();
                m.live = r[8].as<bool>();
                m.heartbeat_age = r[9].as<double>();
                procs[r[0].c_str()].members.push_back(std::move(m));
            }
            for (const auto& r : tx.exec_params(
                     "SELECT processor, partition, owner::text, epoch, " + iso("expires_at") +
                         ", checkpoint, position, pending, " + iso("updated_at") +
                         ", CASE WHEN owner IS NULL THEN 'free' WHEN expires_at > now() THEN 'held' ELSE 'expired' END, "
                         "extract(epoch FROM now() - updated_at)::float8 "
                         "FROM processor_leases WHERE ($1 = '' OR processor = $1) ORDER BY processor, partition",
                     only)) {
                Lease l;
                l.partition = r[1].as<int>();
                l.owner = opt(r[2]);
                l.epoch = r[3].as<std::int64_t>();
                l.expires_at = opt(r[4]);
                l.checkpoint = r[5].as<std::int64_t>();
                l.position = r[6].as<std::int64_t>();
                l.pending = r[7].as<std::int64_t>();
                l.updated_at = opt(r[8]);
                l.state = r[9].c_str();
                l.age = r[10].as<double>();
                procs[r[0].c_str()].leases[l.partition] = std::move(l);
            }
        }
        tx.commit();
    } catch (const std::exception& e) {
        fail("cannot read the processors' state: " + one_line(e.what()));
    }

    Json out = {{"now", now}, {"partitions", partitions ? Json(*partitions) : Json()}, {"processors", Json::array()}};
    bool first = true;
    for (auto& [name, p] : procs) {
        // The runtime writes a lease row on a partition's first claim: one without a row is free.
        if (partitions)
            for (int i = 0; i < *partitions; ++i)
                if (!p.leases.count(i)) p.leases[i].partition = i;
        std::map<std::string, Member*, std::less<>> by_id;
        for (auto& m : p.members) by_id[m.id] = &m;
        int instances = 0, owned = 0;
        std::int64_t pending = 0;
        for (const auto& m : p.members) instances += m.live;
        for (const auto& [i, l] : p.leases) {
            pending += l.pending;
            if (l.state != "held") continue;
            ++owned;
            if (auto it = by_id.find(*l.owner); it != by_id.end()) it->second->partitions.push_back(i);
        }
        const int total =
            partitions ? std::max(*partitions, static_cast<int>(p.leases.size())) : static_cast<int>(p.leases.size());

        if (g.json) {
            Json members = Json::array(), leases = Json::array();
            for (const auto& m : p.members)
                members.push_back({{"member", m.id},
                                   {"live", m.live},
                                   {"host", m.host},
                                   {"pid", m.pid},
                                   {"listen", m.listen},
                                   {"started_at", m.started_at},
                                   {"heartbeat_at", m.heartbeat_at},
                                   {"expires_at", m.expires_at},
                                   {"partitions", m.partitions}});
            for (const auto& [i, l] : p.leases)
                leases.push_back({{"partition", i},
                                  {"state", l.state},
                                  {"owner", or_null(l.owner)},
                                  {"epoch", l.epoch},
                                  {"expires_at", or_null(l.expires_at)},
                                  {"checkpoint", l.checkpoint},
                                  {"position", l.position},
                                  {"pending", l.pending},
                                  {"updated_at", or_null(l.updated_at)}});
            out["processors"].push_back({{"name", name},
                                         {"instances", instances},
                                         {"owned", owned},
                                         {"pending", pending},
                                         {"members", std::move(members)},
                                         {"leases", std::move(leases)}});
            continue;
        }

        if (!first) std::printf("\n");
        first = false;
        std::printf("%s: %d instance%s, %d/%d partitions owned, %lld pending\n", name.c_str(), instances,
                    instances == 1 ? "" : "s", owned, total, static_cast<long long>(pending));
        if (!p.members.empty()) {
            Table mt({"MEMBER", "STATE", "HOST", "PID", "LISTEN", "STARTED", "HEARTBEAT", "PARTITIONS"});
            for (const auto& m : p.members) {
                std::string held = std::to_string(m.partitions.size());
                if (!m.partitions.empty()) held += " (" + ranges(m.partitions) + ")";
                mt.row({short_id(m.id), m.live ? "live" : "gone", m.host, std::to_string(m.pid),
                        m.listen.empty() ? "-" : m.listen, m.started_at.substr(0, 19) + "Z", age(m.heartbeat_age), held});
            }
            std::printf("\n");
            mt.print(stdout);
        }
        if (!p.leases.empty()) {
            Table lt({"PARTITION", "OWNER", "EPOCH", "CHECKPOINT", "POSITION", "PENDING", "UPDATED"});
            for (const auto& [i, l] : p.leases) {
                std::string owner = "-";
                if (l.state == "held") owner = short_id(*l.owner);
                if (l.state == "expired") owner = short_id(*l.owner) + " (expired)";
                lt.row({std::to_string(i), owner, std::to_string(l.epoch), std::to_string(l.checkpoint),
                        std::to_string(l.position), std::to_string(l.pending), l.updated_at ? age(l.age) : "-"});
            }
            std::printf("\n");
            lt.print(stdout);
        }
    }

    if (g.json) {
        std::printf("%s\n", out.dump(2).c_str());
    } else if (!tables) {
        std::printf("no processor has started against this database yet\n");
    } else if (procs.empty()) {
        if (only.empty())
            std::printf("no processor has started against this database yet\n");
        else
            std::printf("no processor %s has started against this database yet\n", only.c_str());
    }
    return 0;
}

}  // namespace

void add_processor_commands(CLI::App& app, Globals& g, Action& action) {
    auto only = std::make_shared<std::string>();
    auto* p = app.add_subcommand("processors", "the processors' instances and partition leases (needs --database-url)");
    p->add_option("--processor", *only, "only this processor's");
    p->footer(kHelp);
    p->callback([&g, &action, only] { action = [&g, only] { return show_processors(g, *only); }; });
}

}  // namespace engram::cli
