#pragma once
// What an append asks for and what it gets back, independent of HTTP.
#include "engram/core/result.h"
#include "engram/core/strong.h"
#include "engram/core/time.h"
#include "engram/core/uuid.h"
#include "engram/events/event.h"

#include <optional>
#include <string>
#include <vector>

namespace engram::store {

// All events of one aggregate, written all-or-nothing (parsed by libs/events).
using events::AppendRequest;

struct Appended {
    Uuid id;
    GlobalPosition position;
    AggregateVersion version;
    SysTime timestamp;
};

struct AppendOutcome {
    bool created = true;  // false: every event was already stored with the same content (idempotent retry)
    std::vector<Appended> events;
};

// Parses a POST /events body (events::parse_append_request) and checks the `data` of catalog types
// against their schemas. Errors: invalid_event, schema_violation (both 400).
Result<AppendRequest> parse_append(const nlohmann::json& body);
// The same from the body's text, parsed with parse_json (invalid_json, 400): what POST /events runs.
Result<AppendRequest> parse_append_body(std::string_view body);

nlohmann::json outcome_json(const AppendOutcome& o);
// Byte for byte outcome_json(o).dump(), without building the DOM: what POST /events answers.
std::string outcome_text(const AppendOutcome& o);

}  // namespace engram::store
