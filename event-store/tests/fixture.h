#pragma once
// Runs an event store in-process against a fresh database of the shared throwaway PostgreSQL.
#include "app.h"
#include "engram/http/client.h"
#include "engram/core/uuid.h"
#include "engram/testing/testing.h"

#include <pqxx/pqxx>

#include <catch2/catch.hpp>

namespace engram::test {

inline config::Values store_config(const std::string& db_url, const std::string& nats_url,
                                   std::map<std::string, std::string> extra = {}) {
    std::map<std::string, std::string> env = {
        {"DATABASE_URL", db_url}, {"EVENT_STORE_LISTEN", "127.0.0.1:0"}, {"NATS_URL", nats_url}, {"LOG_LEVEL", "warn"}};
    for (auto& [k, v] : extra) env[k] = v;
    auto v = event_store::config_spec().load([&](const std::string& k) -> std::optional<std::string> {
        auto it = env.find(k);
        if (it == env.end()) return std::nullopt;
        return it->second;
    });
    REQUIRE(v.ok());
    return *v;
}

struct StoreFixture {
    testing::Nats nats;  // its own: the relay of each store owns the EVENTS stream of its server
    std::string db_url = testing::Postgres::shared().create_database();
    std::unique_ptr<event_store::App> app;
    std::unique_ptr<http::Client> client;

    explicit StoreFixture(std::map<std::string, std::string> extra = {}, testing::NatsOptions nats_options = {})
        : nats(std::move(nats_options)) {
        http::Headers auth;
        if (extra.count("ENGRAM_API_TOKEN")) auth.emplace_back("Authorization", "Bearer " + extra["ENGRAM_API_TOKEN"]);
        app = std::make_unique<event_store::App>(store_config(db_url, nats.url(), std::move(extra)));
        REQUIRE(app->start().ok());
        client = std::make_unique<http::Client>(app->url());
        // The writer creates the schema on its first connection.
        REQUIRE(testing::eventually([&] {
            auto r = client->get("/events?limit=1", auth);
            return r.ok() && r->status == 200;
        }));
    }

    http::ClientResponse post(const nlohmann::json& body) {
        auto r = client->post_json("/events", body);
        REQUIRE(r.ok());
        return *r;
    }
    http::ClientResponse post_raw(const std::string& body) {
        auto r = client->request("POST", "/events", body, {{"Content-Type", "application/json"}});
        REQUIRE(r.ok());
        return *r;
    }
    http::ClientResponse get(const std::string& path) {
        auto r = client->get(path);
        REQUIRE(r.ok());
        return *r;
    }
    // Every event in the log, straight from PostgreSQL (not through the API under test).
    std::int64_t count_rows() {
        pqxx::connection c(db_url);
        pqxx::nontransaction tx(c);
        return tx.exec("SELECT count(*) FROM events")[0][0].as<std::int64_t>();
    }
};

}  // namespace engram::test
