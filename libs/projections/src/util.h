#pragma once
// Small helpers shared by the projections (internal).
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "engram/core/result.h"
#include "engram/events/event.h"

namespace engram::projections::detail {

// data[key] when it is a string, else `fallback`.
inline std::string str(const nlohmann::json& data, std::string_view key, std::string fallback = {}) {
    auto it = data.find(key);
    if (it != data.end() && it->is_string()) return it->get<std::string>();
    return fallback;
}

inline bool has_string(const nlohmann::json& data, std::string_view key) {
    auto it = data.find(key);
    return it != data.end() && it->is_string();
}

inline std::int64_t position_of(const nlohmann::json& state) {
    auto it = state.find("position");
    if (it != state.end() && it->is_number_integer()) return it->get<std::int64_t>();
    return 0;
}

// aggregate_of() of a projection per session: `id` is itself a session aggregate id.
inline Result<std::string> session_instance(std::string_view projection, std::string_view id) {
    constexpr std::string_view prefix = "session:";
    if (id.size() <= prefix.size() || id.substr(0, prefix.size()) != prefix || !events::valid_aggregate_id(id))
        return Error::make("invalid_parameter", std::string(projection) +
                                                    " id must be a session aggregate id 'session:<channel>:<id>', got '" +
                                                    std::string(id) + "'");
    return std::string(id);
}

// The common guard of apply(): the event belongs to `aggregate`, and is newer than the state.
inline bool should_apply(const nlohmann::json& state, const events::Event& e, std::string_view aggregate) {
    return e.aggregate_id == aggregate && e.position.value() > position_of(state);
}

}  // namespace engram::projections::detail
