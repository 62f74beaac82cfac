// engram parked list / parked retry: the events a processor gave up on (table processor_parked).
#include <CLI/CLI.hpp>

#include <cstdio>

#include <pqxx/pqxx>

#include "common.h"
#include "engram/core/uuid.h"

namespace engram::cli {

std::unique_ptr<pqxx::connection> connect_database(const Globals& g, const char* what);

namespace {

bool parked_table_exists(pqxx::work& tx) {
    return tx.exec("SELECT to_regclass('processor_parked') IS NOT NULL")[0][0].as<bool>();
}

int list_parked(const Globals& g, const std::string& processor) {
    auto conn = connect_database(g, "parked list");
    nlohmann::json out = nlohmann::json::array();
    Table t({"PROCESSOR", "EVENT ID", "POSITION", "AGGREGATE", "TYPE", "ATTEMPTS", "PARKED AT", "RETRY", "ERROR"});
    try {
        pqxx::work tx(*conn);
        if (parked_table_exists(tx)) {
            auto rows = tx.exec_params(
                "SELECT processor, event_id::text, position, aggregate_id, type, coalesce(envelope::text, 'null'), "
                "coalesce(error, ''), coalesce(attempts, 0), "
                "to_char(parked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
                "coalesce(retry_requested, false) "
                "FROM processor_parked WHERE ($1 = '' OR processor = $1) ORDER BY processor, position, event_id",
                processor);
            for (const auto& r : rows) {
                nlohmann::json env = nlohmann::json::parse(r[5].c_str(), nullptr, false);
                nlohmann::json row = {{"processor", r[0].c_str()},
                                      {"event_id", r[1].c_str()},
                                      {"position", r[2].is_null() ? nlohmann::json() : nlohmann::json(r[2].as<std::int64_t>())},
                                      {"aggregate_id", r[3].is_null() ? "" : r[3].c_str()},
                                      {"type", r[4].is_null() ? "" : r[4].c_str()},
                                      {"envelope", env.is_discarded() ? nlohmann::json() : env},
                                      {"error", r[6].c_str()},
                                      {"attempts", r[7].as<int>()},
                                      {"parked_at", r[8].is_null() ? "" : r[8].c_str()},
                                      {"retry_requested", r[9].as<bool>()}};
                t.row({row["processor"], row["event_id"], r[2].is_null() ? "" : r[2].c_str(), row["aggregate_id"], row["type"],
                       std::to_string(r[7].as<int>()), row["parked_at"], r[9].as<bool>() ? "requested" : "",
                       truncate(one_line(r[6].c_str()), 60)});
                out.push_back(std::move(row));
            }
        }
        tx.commit();
    } catch (const std::exception& e) {
        fail("cannot read parked events: " + one_line(e.what()));
    }
    if (g.json) {
        std::printf("%s\n", out.dump().c_str());
    } else if (t.size() == 0) {
        std::printf("no parked events%s\n", processor.empty() ? "" : (" for " + processor).c_str());
    } else {
        t.print(stdout);
    }
    return 0;
}

struct RetryOpts {
    std::string event_id;
    bool all = false;
    std::string processor;
};

int retry_parked(const Globals& g, const RetryOpts& o) {
    if (o.all == !o.event_id.empty()) usage("parked retry needs exactly one of <event_id> or --all");
    if (!o.all && !Uuid::parse(o.event_id)) usage("bad event id '" + o.event_id + "': expected a UUID");
    auto conn = connect_database(g, "parked retry");
    std::int64_t n = 0;
    try {
        pqxx::work tx(*conn);
        if (parked_table_exists(tx)) {
            auto r = o.all ? tx.exec_params(
                                 "UPDATE processor_parked SET retry_requested = true "
                                 "WHERE ($1 = '' OR processor = $1)",
                                 o.processor)
                           : tx.exec_params(
                                 "UPDATE processor_parked SET retry_requested = true "
                                 "WHERE event_id = $2::uuid AND ($1 = '' OR processor = $1)",
                                 o.processor, Uuid::parse(o.event_id)->str());
            n = static_cast<std::int64_t>(r.affected_rows());
        }
        tx.commit();
    } catch (const std::exception& e) {
        fail("cannot request the retry: " + one_line(e.what()));
    }
    if (!o.all && n == 0) fail("no parked event " + o.event_id + (o.processor.empty() ? "" : " for processor " + o.processor));
    if (g.json)
        std::printf("%s\n", nlohmann::json{{"retry_requested", n}}.dump().c_str());
    else
        std::printf("retry requested for %lld parked event%s\n", static_cast<long long>(n), n == 1 ? "" : "s");
    return 0;
}

}  // namespace

void add_parked_commands(CLI::App& app, Globals& g, Action& action) {
    auto* pk = app.add_subcommand("parked", "events processors gave up on (needs --database-url)");
    pk->require_subcommand(1);

    auto proc = std::make_shared<std::string>();
    auto* l = pk->add_subcommand("list", "list parked events");
    l->add_option("--processor", *proc, "only this processor's");
    l->callback([&g, &action, proc] { action = [&g, proc] { return list_parked(g, *proc); }; });

    auto ro = std::make_shared<RetryOpts>();
    auto* r = pk->add_subcommand("retry", "ask the processor to retry a parked event (or all with --all)");
    r->add_option("event_id", ro->event_id, "the parked event's id");
    r->add_flag("--all", ro->all, "every parked event (of --processor when given)");
    r->add_option("--processor", ro->processor, "only this processor's");
    r->callback([&g, &action, ro] { action = [&g, ro] { return retry_parked(g, *ro); }; });
}

}  // namespace engram::cli
