#pragma once
// What the gateway's integration tests share: the gateway in-process against a testing::Stack's
// store, and the check of an error answer.
#include "app.h"

#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace engram::gateway::test {

// The gateway with GATEWAY_LISTEN=127.0.0.1:0, EVENT_STORE_URL=<the stack's store>, LOG_LEVEL=warn and
// `env` on top; started, with a client on its URL.
struct InProcess {
    std::unique_ptr<App> app;
    std::unique_ptr<http::Client> client;

    InProcess(testing::Stack& stack, const std::map<std::string, std::string>& env,
              std::function<std::int64_t()> now_s = nullptr) {
        std::map<std::string, std::string> all = {
            {"GATEWAY_LISTEN", "127.0.0.1:0"}, {"EVENT_STORE_URL", stack.url()}, {"LOG_LEVEL", "warn"}};
        for (const auto& [k, v] : env) all[k] = v;
        auto cfg = config_spec().load([&](const std::string& k) -> std::optional<std::string> {
            auto it = all.find(k);
            return it == all.end() ? std::nullopt : std::optional<std::string>(it->second);
        });
        INFO((cfg ? "" : cfg.error().detail));
        REQUIRE(cfg.ok());
        app = std::make_unique<App>(*cfg, std::move(now_s));
        auto st = app->start();
        INFO((st ? "" : st.error().detail));
        REQUIRE(st.ok());
        client = std::make_unique<http::Client>(app->url());
    }
};

inline void require_error(const http::ClientResponse& r, int status, const std::string& code, const std::string& part = "") {
    INFO(r.body);
    REQUIRE(r.status == status);
    CHECK(r.json()["error"] == code);
    CHECK(r.json()["detail"].is_string());
    if (!part.empty()) CHECK(r.json()["detail"].get<std::string>().find(part) != std::string::npos);
}

using testing::python_request;

// The same check as require_error, on a python_request answer.
inline void require_error(const nlohmann::json& r, int status, const std::string& code, const std::string& part = "") {
    INFO(r.dump());
    REQUIRE(r["status"] == status);
    auto body = nlohmann::json::parse(r["body"].get<std::string>(), nullptr, false);
    CHECK(body["error"] == code);
    CHECK(body["detail"].is_string());
    if (!part.empty() && body["detail"].is_string()) CHECK(body["detail"].get<std::string>().find(part) != std::string::npos);
}

}  // namespace engram::gateway::test
