#pragma once
// The `conversation` projection: one session's messages, tool calls, run state, recent thinking and
// deliveries. Instance id == aggregate id == "session:<channel>:<id>". See README.md.
#include <cstddef>

#include "engram/projections/projection.h"

namespace engram::projections {

inline constexpr std::size_t kMaxMessages = 200;    // the last 200 messages are kept
inline constexpr std::size_t kMaxToolCalls = 200;   // the last 200 tool calls are kept
inline constexpr std::size_t kMaxDeliveries = 200;  // the last 200 delivery outcomes are kept
inline constexpr std::size_t kMaxThinking = 5;      // the last 5 thinking texts are kept

const Projection& conversation();

}  // namespace engram::projections
