#pragma once
// What every ingress of the gateway shares: the namespace its event ids are derived in, and the
// function that appends one event to the store.
#include "engram/core/result.h"
#include "engram/core/uuid.h"

#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <utility>

namespace engram::gateway {

// Ingress event ids are v5(this namespace, "<kind>:<source>:<source's own id>"), so a retried
// delivery maps to the id already stored and the store answers 200 instead of storing it again.
const Uuid& ingress_ns();

// Appends one event; on success the store's status (201 stored, 200 already stored) and answer.
// Errors: "unavailable" (anything a retry may fix: the store down or unreachable, 5xx, 401...: ask the
// sender to retry, never acknowledge), "id_conflict" (the id is taken by different content), "refused"
// (400/413: the event itself is invalid).
using AppendFn = std::function<Result<std::pair<int, nlohmann::json>>(const nlohmann::json& event)>;

}  // namespace engram::gateway
