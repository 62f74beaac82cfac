#include "engram/store/append.h"

#include "engram/events/catalog.h"

namespace engram::store {

namespace {

Result<AppendRequest> validated(Result<AppendRequest> req) {
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

}  // namespace

Result<AppendRequest> parse_append(const nlohmann::json& body) { return validated(events::parse_append_request(body)); }

Result<AppendRequest> parse_append_body(std::string_view body) {
    auto j = parse_json(body, "the body");
    if (!j) return std::move(j).error();
    return validated(events::parse_append_request(std::move(*j)));
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

std::string outcome_text(const AppendOutcome& o) {
    // Ids, numbers and RFC 3339 times need no escaping: written directly, in nlohmann's key order.
    std::string out;
    out.reserve(16 + o.events.size() * 130);
    out += "{\"events\":[";
    for (std::size_t i = 0; i < o.events.size(); ++i) {
        const auto& a = o.events[i];
        if (i) out += ',';
        out += "{\"aggregate_version\":";
        out += std::to_string(a.version.value());
        out += ",\"id\":\"";
        out += a.id.str();
        out += "\",\"position\":";
        out += std::to_string(a.position.value());
        out += ",\"timestamp\":\"";
        out += format_rfc3339(a.timestamp);
        out += "\"}";
    }
    out += "]}";
    return out;
}

}  // namespace engram::store
