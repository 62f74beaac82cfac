#include "fork.h"

#include "engram/http/url.h"
#include "engram/log/log.h"

#include <chrono>

namespace engram::gateway {

using nlohmann::json;

namespace {

http::Response unavailable() {
    return http::Response::error(503, "unavailable", "the event store is unavailable; retry later (nothing was written)");
}

}  // namespace

Result<json> Forks::page(const std::string& session, std::int64_t from, int limit) {
    http::ClientOptions o(std::chrono::milliseconds(10000));
    o.response_limit = http::kStorePageResponseLimit;
    http::Client c(store_url_, o);
    auto r = c.get("/aggregates/" + http::url_encode(session) + "/events?from_version=" + std::to_string(from) +
                       "&limit=" + std::to_string(limit),
                   headers_);
    if (!r) return Error::make("unavailable", r.error().detail);
    if (r->status == 404) return json{{"events", json::array()}};
    if (r->status != 200) return Error::make("unavailable", "reading " + session + ": HTTP " + std::to_string(r->status));
    return r->json();
}

projections::SessionReader Forks::reader() {
    return projections::store_session_reader(
        [this](const std::string& session, std::int64_t from, int limit) { return page(session, from, limit); });
}

http::Response Forks::fork(projections::ForkRequest req, const json& body, bool allow_model) {
    if (!body.is_object())
        return http::Response::error(400, "invalid_request", "the body must be a JSON object {\"at\": <position>}");
    if (!body.contains("at") || !body["at"].is_number_integer())
        return http::Response::error(400, "invalid_request", "field 'at' must be an integer: the global position to fork at");
    req.at = body["at"].get<std::int64_t>();
    for (const char* k : {"model", "prompt"}) {
        if (!body.contains(k)) continue;
        if (!body[k].is_string() || body[k].get<std::string>().empty())
            return http::Response::error(400, "invalid_request",
                                         std::string("field '") + k + "' must be a non-empty string when present");
    }
    if (body.contains("model")) {
        if (!allow_model) return http::Response::error(400, "invalid_request", "field 'model' is not accepted here");
        req.model = body["model"].get<std::string>();
    }
    if (body.contains("prompt")) req.prompt = body["prompt"].get<std::string>();

    auto ev = projections::fork_event(req, reader());
    if (!ev) {
        const auto& e = ev.error();
        if (e.code == "not_found") return http::Response::error(404, "not_found", e.detail);
        if (e.code == "invalid_parameter") return http::Response::error(400, "invalid_parameter", e.detail);
        log::get("gateway")->warn("fork of {}: {}", req.origin, e.detail);
        return unavailable();
    }
    auto r = append_(*ev);
    if (!r) {
        const auto& e = r.error();
        if (e.code == "id_conflict")
            return http::Response::error(409, "id_conflict", "this idempotency key already made a different fork");
        if (e.code == "refused") return http::Response::error(400, "invalid_request", e.detail);
        return unavailable();
    }
    const json& d = (*ev)["data"];
    return http::Response::json(r->first, {{"session_id", d["forked_session_id"]},
                                           {"origin_session_id", d["origin_session_id"]},
                                           {"at_position", d["at_position"]},
                                           {"event_id", (*ev)["id"]},
                                           {"position", r->second["events"][0]["position"]}});
}

Result<json> Forks::inherited_events(const std::string& session) {
    json out = json::array();
    auto head = page(session, 1, 1);
    if (!head) return head.error();
    if (!head->contains("events") || !(*head)["events"].is_array() || (*head)["events"].empty()) return out;
    auto first = events::Event::from_json((*head)["events"][0]);
    if (!first) return out;
    auto history = projections::inherited_history(*first, reader());
    if (!history) {
        if (history.error().code == "fork_too_deep") return out;
        return history.error();
    }
    std::size_t total = 0;
    for (const auto& seg : *history) total += seg.events.size();
    std::size_t skip = total > kMaxInherited ? total - kMaxInherited : 0;
    for (const auto& seg : *history)
        for (const auto& e : seg.events) {
            if (skip > 0) {
                --skip;
                continue;
            }
            out.push_back(e.to_json());
        }
    return out;
}

}  // namespace engram::gateway
