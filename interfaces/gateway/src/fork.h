#pragma once
// Forks through the gateway: POST /sessions/{id}/fork (API token) and the web chat's POST /chat/fork
// (its cookie) both check the request against the store and append one SessionForked
// (engram/projections/fork.h); GET /chat/history gives a fork's inherited events to the web chat.
#include "engram/core/result.h"
#include "engram/http/client.h"
#include "engram/http/server.h"
#include "engram/projections/fork.h"
#include "ingress.h"

#include <nlohmann/json.hpp>
#include <string>

namespace engram::gateway {

class Forks {
public:
    Forks(std::string store_url, http::Headers store_headers, AppendFn append)
        : store_url_(std::move(store_url)), headers_(std::move(store_headers)), append_(std::move(append)) {}

    // Reads `body` ({"at", "model"?, "prompt"?}) and forks `req.origin`: 201 (200 when the same key
    // already made this fork) with {"session_id", "origin_session_id", "at_position", "event_id",
    // "position"}, or the error answer (400 invalid_request/invalid_parameter, 404 not_found, 409
    // id_conflict, 503 unavailable); nothing is written unless the answer is 2xx. `allow_model`:
    // whether the body may name a model.
    http::Response fork(projections::ForkRequest req, const nlohmann::json& body, bool allow_model);

    // The events a session inherits (oldest first, at most kMaxInherited), empty for a session that
    // is no fork; "unavailable" when the store cannot be read.
    static constexpr std::size_t kMaxInherited = 5000;
    Result<nlohmann::json> inherited_events(const std::string& session);

private:
    Result<nlohmann::json> page(const std::string& session, std::int64_t from, int limit);
    projections::SessionReader reader();
    std::string store_url_;
    http::Headers headers_;
    AppendFn append_;
};

}  // namespace engram::gateway
