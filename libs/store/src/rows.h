#pragma once
// The one mapping between a row of `events` and events::Event (internal to libs/store).
#include "engram/events/event.h"

#include <pqxx/pqxx>

namespace engram::store::rows {

// Select list matching to_event().
inline constexpr const char* kColumns =
    "position, id, type, aggregate_id, aggregate_version, (extract(epoch FROM ts) * 1000)::bigint, data::text, "
    "metadata::text";

inline events::Event to_event(const pqxx::row& row) {
    events::Event ev;
    ev.position = GlobalPosition(row[0].as<std::int64_t>());
    ev.id = *Uuid::parse(row[1].c_str());
    ev.type = row[2].c_str();
    ev.aggregate_id = row[3].c_str();
    ev.version = AggregateVersion(row[4].as<std::int64_t>());
    ev.timestamp = SysTime(std::chrono::milliseconds(row[5].as<std::int64_t>()));
    // Not parse_json: the value passed it when appended, and jsonb prints numbers without exponents
    // (1e20 comes back as 100000000000000000000, which parse_json would refuse as beyond 64 bits).
    ev.data = nlohmann::json::parse(row[6].c_str());
    ev.metadata = nlohmann::json::parse(row[7].c_str());
    return ev;
}

inline std::vector<events::Event> to_events(const pqxx::result& r) {
    std::vector<events::Event> out;
    out.reserve(r.size());
    for (const auto& row : r) out.push_back(to_event(row));
    return out;
}

}  // namespace engram::store::rows
