#pragma once
// The `reminders` projection: one session's pending reminders (the earliest due first) and the last
// ones that fired or were cancelled. Instance id == aggregate id == "session:<channel>:<id>". The
// memory processor persists it; its scheduler reads `next_due_at` of every persisted state to find
// what is due. See README.md.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "engram/projections/projection.h"

namespace engram::projections {

inline constexpr std::size_t kMaxPendingReminders = 100;  // a session's pending reminders; more are refused
inline constexpr std::size_t kMaxFinishedReminders = 50;  // fired / cancelled ones kept for the record

const Projection& reminders();

// `due_at` as the projection keeps it: UTC to the second, "YYYY-MM-DDTHH:MM:SSZ" (so that text
// order is time order, in the state and in SQL). nullopt for a value that is not RFC 3339.
std::optional<std::string> normalize_due_at(std::string_view rfc3339);

}  // namespace engram::projections
