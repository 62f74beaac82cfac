#pragma once
// Test helpers: stored events built in memory with deterministic ids, positions and times.
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "engram/core/uuid.h"
#include "engram/events/event.h"

namespace engram::projections::test {

inline Uuid test_ns() { return *Uuid::parse("6f9619ff-8b86-4011-b42d-00cf4fc964ff"); }

// Base time 2026-11-22T10:00:00Z plus `position` seconds.
inline SysTime time_at(std::int64_t position) { return SysTime(std::chrono::milliseconds(1795341600000LL + position * 1000)); }

inline events::Event ev(std::string type, std::string aggregate, nlohmann::json data, std::int64_t position,
                        std::int64_t version = 0) {
    events::Event e;
    e.id = Uuid::v5(test_ns(), aggregate + "#" + std::to_string(position));
    e.type = std::move(type);
    e.aggregate_id = std::move(aggregate);
    e.version = AggregateVersion(version ? version : position);
    e.position = GlobalPosition(position);
    e.timestamp = time_at(position);
    e.data = std::move(data);
    return e;
}

inline std::string id_of(const events::Event& e) { return e.id.str(); }

}  // namespace engram::projections::test
