#include "engram/store/append.h"

#include "engram/events/catalog.h"

namespace engram::store {

Result<AppendRequest> parse_append(const nlohmann::json& body) {
    auto req = events::parse_append_request(body);
    if (!req) return req;
    const auto& catalog = events::Catalog::builtin();
    for (std::size_t i = 0; i < req->events.size(); ++i) {
        if (auto s = catalog.validate(req->events[i]); !s) {
            auto err = s.error();
            if (req->batch) err.detail = "events[" + std::to_string(i) + "]: " + err.detail;
            return err;
        }
    }
    return req;
}

Result<AppendRequest> parse_append_body(std::string_view body) {
    auto j = parse_json(body, "the body");
    if (!j) return std::move(j).error();
    return parse_append(*j);
}

nlohmann::json outcome_json(const AppendOutcome& o) {
    auto arr = nlohmann::json::array();
    for (const auto& a : o.events)
        arr.push_back({{"id", a.id.str()},
                       {"position", a.position.value()},
                       {"aggregate_version", a.version.value()},
                       {"timestamp", format_rfc3339(a.timestamp)}});
    return {{"events", std::move(arr)}};
}

}  // namespace engram::store
