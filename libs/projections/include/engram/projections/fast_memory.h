#pragma once
// The `fast_memory` projection: a user's profile and most important memories within ~500 tokens.
// Instance id == aggregate id == "user:<user_id>". See README.md.
#include <cstddef>
#include <string>
#include <string_view>

#include "engram/projections/projection.h"

namespace engram::projections {

inline constexpr std::size_t kFastMemoryTokenBudget = 500;

const Projection& fast_memory();

// Token estimate used by fast_memory: ceil(code points / 4).
std::size_t estimate_tokens(std::string_view text);

// The short text the AI prompt uses: the profile ("- key: value" lines, keys sorted) then the kept
// memories, most important first ("- text" lines). "" when there is nothing to say.
std::string fast_memory_summary(const nlohmann::json& state);

// True when the content differs: everything except the top-level "position" and the memories'
// own "position" (which only moves on a refresh) is compared, including the memories' order.
// The memory processor appends FastMemoryUpdated only when this is true.
bool fast_memory_changed(const nlohmann::json& before, const nlohmann::json& after);

}  // namespace engram::projections
