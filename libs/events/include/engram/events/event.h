#pragma once
// The event envelope (docs/events.md): what a client submits (NewEvent) and what the store returns (Event),
// with the parsing rules of POST /events.
#include <cstddef>
#include <nlohmann/json.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/json.h"
#include "engram/core/result.h"
#include "engram/core/strong.h"
#include "engram/core/time.h"
#include "engram/core/uuid.h"

namespace engram::events {

inline constexpr std::size_t kMaxTypeLength = 128;         // code points (type names are ASCII)
inline constexpr std::size_t kMaxAggregateIdLength = 256;  // code points
inline constexpr std::size_t kMaxBatchEvents = 1000;       // events in one POST /events batch

// A POST /events body is parsed with parse_json's limit (kMaxJsonDepth), so a stored envelope nests at
// most that deep: `data` of a single event may have 64 levels of its own, in a batch (three levels
// down: events[i].data) 62. The store's answers wrap envelopes two levels down ({"events": [...]})
// and a projection's state holds event data a few levels down: its clients parse answers with this.
inline constexpr int kMaxStoreAnswerDepth = kMaxJsonDepth + 4;

// Metadata fields the system understands; when present they must be strings.
namespace meta {
inline constexpr std::string_view source = "source";
inline constexpr std::string_view correlation_id = "correlation_id";
inline constexpr std::string_view causation_id = "causation_id";
inline constexpr std::string_view user_id = "user_id";
inline constexpr std::string_view session_id = "session_id";
}  // namespace meta

// What a client submits (before the store assigns positions).
struct NewEvent {
    std::optional<Uuid> id;  // client-supplied id makes the append idempotent
    std::string type;
    std::string aggregate_id;
    nlohmann::json data = nlohmann::json::object();
    nlohmann::json metadata = nlohmann::json::object();

    // {"id"? ,"type","aggregate_id","data","metadata"}: the body of POST /events for this event.
    nlohmann::json to_json() const;
};

// A stored event (the full envelope).
struct Event {
    Uuid id;
    std::string type;
    std::string aggregate_id;
    AggregateVersion version;
    GlobalPosition position;
    SysTime timestamp;
    nlohmann::json data = nlohmann::json::object();
    nlohmann::json metadata = nlohmann::json::object();
    // to_json().dump(), when already made: the writer makes it from the data and metadata text it
    // serialised for the INSERT, and the relay and the SSE streams send it as it is.
    std::shared_ptr<const std::string> text;

    // {"id","type","aggregate_id","aggregate_version","position","timestamp","data","metadata"}
    nlohmann::json to_json() const;
    // Byte for byte to_json().dump(), built from data and metadata already serialised.
    // `timestamp_text`, when given, is format_rfc3339(timestamp) already made.
    std::string to_json_text(std::string_view data_text, std::string_view metadata_text,
                             std::string_view timestamp_text = {}) const;
    // `text` when set, else to_json().dump().
    std::string json_text() const;
    // A copy for code that only sends `text` (the relay, SSE): without the data and metadata DOMs
    // when `text` is set, a full copy otherwise.
    Event text_copy() const;
    // The inverse of to_json(); every field is required and checked (error code "invalid_event").
    static Result<Event> from_json(const nlohmann::json& j);
};

// Parses one event object of a POST /events body. Errors have code "invalid_event" and a detail naming
// the field, e.g. "field 'type' must be a string":
//  - not an object;
//  - `type` missing, not a string, or not PascalCase ([A-Z][A-Za-z0-9]*, at most 128 characters);
//  - `aggregate_id` missing, not a string, empty, over 256 characters, or holding control characters;
//  - `id` present but not a UUID string (the nil UUID is refused too);
//  - `data` / `metadata` present but not an object (missing = {}), or holding U+0000 in a string or a
//    key (PostgreSQL's jsonb cannot store it): "field 'data' holds U+0000 at /a/0";
//  - metadata fields source/correlation_id/causation_id/user_id/session_id present but not strings.
// Store-assigned fields (`position`, `aggregate_version`, `timestamp`) and unknown fields are ignored.
// Schema validation of `data` is separate: Catalog::validate.
Result<NewEvent> parse_new_event(const nlohmann::json& j);

// A whole POST /events body: one event (optionally with `expected_version`), or
// {"aggregate_id": A, "expected_version": N?, "events": [...]} (a body with an `events` field is a batch).
// In a batch, an event without `aggregate_id` takes the batch's; one with another aggregate is refused;
// `events` must hold 1..1000 events with distinct ids; details are prefixed with the index ("events[2]: ...").
// `expected_version`, when present, must be a non-negative integer.
struct AppendRequest {
    std::string aggregate_id;
    std::optional<AggregateVersion> expected_version;
    std::vector<NewEvent> events;
    bool batch = false;  // the body used the {"events": [...]} form
};
Result<AppendRequest> parse_append_request(const nlohmann::json& body);
// The same, moving each event's data and metadata out of `body` instead of copying them.
Result<AppendRequest> parse_append_request(nlohmann::json&& body);
// The same from the text of the body: parse_json first (Error "invalid_json": not JSON, nesting
// deeper than kMaxJsonDepth, a number out of range), then parse_append_request.
Result<AppendRequest> parse_append_body(std::string_view body);

// True when a stored event holds what was submitted (type, aggregate, data, metadata): the test of
// idempotent re-sends (same id + same content -> 200, different content -> 409 id_conflict).
bool same_content(const NewEvent& submitted, const Event& stored);

// The name rules, for code that checks filters or builds events.
bool valid_type_name(std::string_view type);             // [A-Z][A-Za-z0-9]*, <= 128 chars
bool valid_aggregate_id(std::string_view aggregate_id);  // non-empty, <= 256 chars, no control chars

// The partition of an aggregate: FNV-1a (32 bit) of its id, modulo `partitions` (the hash NATS
// subject mapping's partition() uses, so the split could move into the server later). The relay
// publishes an event on "<prefix>.<type>.<partition>"; a processor instance reads the partitions it
// leases.
std::uint32_t fnv1a32(std::string_view s);
int partition_of(std::string_view aggregate_id, int partitions);
inline constexpr int kDefaultPartitions = 16;
inline constexpr int kMaxPartitions = 1024;

}  // namespace engram::events
