#include "engram/testing/stack.h"

#include "engram/events/event.h"
#include "engram/http/client.h"
#include "engram/http/url.h"
#include "engram/testing/postgres.h"
#include "engram/testing/util.h"

#include <functional>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <stdexcept>

namespace engram::testing {

Stack::Stack(const std::string& name, std::map<std::string, std::string> store_env)
    : db_(Postgres::shared().create_database()), port_(free_port()), dir_(make_temp_dir(name)) {
    std::map<std::string, std::string> env = {{"DATABASE_URL", db_},
                                              {"NATS_URL", nats_.url()},
                                              {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(port_)},
                                              {"LOG_LEVEL", "warn"}};
    for (auto& [k, v] : store_env) env[k] = v;
    store_env_ = std::move(env);
    start_store();
}

void Stack::kill_store() {
    if (store_) store_->kill9();
    store_.reset();
}

void Stack::start_store() {
    kill_store();
    store_ = std::make_unique<Process>(std::vector<std::string>{build_dir() + "/event-store/engram-event-store"}, store_env_,
                                       dir_ + "/store.log");
    bool ready = eventually(
        [&] {
            http::Client c(url());
            http::Headers h;
            if (store_env_.count("ENGRAM_API_TOKEN")) h.emplace_back("Authorization", "Bearer " + store_env_["ENGRAM_API_TOKEN"]);
            auto r = c.get("/readyz", h);
            return r.ok() && r->status == 200;
        },
        std::chrono::seconds(20));
    if (!ready) throw std::runtime_error("the event store did not become ready: " + tail_file(store_->log_path()));
}

Stack::~Stack() = default;

std::string Stack::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::unique_ptr<Process> Stack::start(const std::string& relative_binary, const std::map<std::string, std::string>& env,
                                      const std::string& log_name) {
    std::map<std::string, std::string> all = {
        {"DATABASE_URL", db_}, {"NATS_URL", nats_.url()}, {"EVENT_STORE_URL", url()}, {"LOG_LEVEL", "info"}};
    for (auto& [k, v] : env) all[k] = v;
    std::string name = log_name;
    if (name.empty()) name = relative_binary.substr(relative_binary.find_last_of('/') + 1);
    return std::make_unique<Process>(std::vector<std::string>{build_dir() + "/" + relative_binary}, all,
                                     dir_ + "/" + name + "-" + std::to_string(++started_) + ".log");
}

std::vector<nlohmann::json> Stack::aggregate(const std::string& aggregate_id) {
    http::ClientOptions o;
    o.response_limit = http::kStorePageResponseLimit;
    http::Client c(url(), o);
    auto r = c.get("/aggregates/" + http::url_encode(aggregate_id) + "/events?limit=1000");
    if (!r.ok() || r->status != 200) return {};
    auto evs = r->json(events::kMaxStoreAnswerDepth)["events"];
    return std::vector<nlohmann::json>(evs.begin(), evs.end());
}

namespace {

// count(*) of the events matching `where` ("" = all); 0 before the store has created the table.
std::int64_t count_events(const std::string& db, const std::function<std::string(pqxx::nontransaction&)>& where) {
    pqxx::connection c(db);
    pqxx::nontransaction tx(c);
    if (!tx.exec("SELECT to_regclass('events') IS NOT NULL")[0][0].as<bool>()) return 0;
    return tx.exec("SELECT count(*) FROM events" + where(tx))[0][0].as<std::int64_t>();
}

}  // namespace

std::int64_t Stack::count(const std::string& type, const std::string& aggregate_id) {
    return count_events(db_, [&](pqxx::nontransaction& tx) {
        std::string w = " WHERE type = " + tx.quote(type);
        if (!aggregate_id.empty()) w += " AND aggregate_id = " + tx.quote(aggregate_id);
        return w;
    });
}

std::int64_t Stack::count_all() {
    return count_events(db_, [](pqxx::nontransaction&) { return std::string(); });
}

}  // namespace engram::testing
