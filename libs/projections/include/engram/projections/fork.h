#pragma once
// Forks: a session whose history is another session's events up to a global position, by reference.
// A fork's first event is a SessionForked naming its origin and the position; the origin is never
// written. Every reader of a fork's history (the AI processor's prompt, the web chat, `engram replay`)
// composes it here, so forks of forks compose the same way everywhere.
//
// Global positions order a fork's whole history: the origin's events are at or before the fork
// position, and the fork's own events were all committed after its SessionForked, which itself came
// after that position. So a history is a list of segments, oldest first, each one session's events,
// and every position in a segment is below every position in the next.
//
// Pure except for the SessionReader callers pass in; thread-safe.
#include <cstdint>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engram/core/result.h"
#include "engram/core/uuid.h"
#include "engram/events/event.h"

namespace engram::projections {

// Forks of forks of ... at most this deep: a reader never follows more origins than this, so a
// hand-made cycle of SessionForked events cannot make it loop.
inline constexpr int kMaxForkDepth = 8;
inline constexpr std::int64_t kAllPositions = std::numeric_limits<std::int64_t>::max();

struct ForkOrigin {
    std::string session_id;
    std::int64_t position = 0;
};

// The origin a SessionForked event names; nullopt for any other event (or a malformed one).
std::optional<ForkOrigin> fork_origin(const events::Event& e);

// One session's share of a history.
struct Segment {
    std::string session_id;
    std::vector<events::Event> events;  // position order
};

// One session's events with a position <= up_to, oldest first; empty when the session has none.
using SessionReader = std::function<Result<std::vector<events::Event>>(const std::string& session, std::int64_t up_to)>;

// A SessionReader paging the store's GET /aggregates/{id}/events: `get` fetches the page
// ?from_version=&limit= of a session and returns the parsed body ({"events": []} for a 404).
using PageGetter = std::function<Result<nlohmann::json>(const std::string& session, std::int64_t from_version, int limit)>;
SessionReader store_session_reader(PageGetter get);

// What a session inherits when its first event `first` is a SessionForked: the origin's history up
// to the fork position (itself composed through the origin's own origin), oldest first; empty for a
// session that is no fork. Error "fork_too_deep" past kMaxForkDepth.
Result<std::vector<Segment>> inherited_history(const events::Event& first, const SessionReader& read);

// A session's whole history up to `up_to`: what it inherits, then its own events.
Result<std::vector<Segment>> session_history(const std::string& session, std::int64_t up_to, const SessionReader& read);

// The `conversation` view of a history: every segment folded as its own session, their messages,
// tool calls, thinking and deliveries joined oldest first (within the projection's bounds); the
// session id, run, `forked_from` and position are the last segment's. Only events with a position
// below `before` are folded.
nlohmann::json conversation_view(const std::vector<Segment>& history, std::int64_t before = kAllPositions);

// The newest user turn of a conversation view ("role": "user"), or nullptr when it has none.
const nlohmann::json* last_user_message(const nlohmann::json& view);

struct ForkRequest {
    std::string origin;  // session:<channel>:<id>
    std::int64_t at = 0;
    std::string model, prompt;  // optional ("")
    std::string source;         // api | web | cli
    std::string key;            // idempotency key: the same key and origin give the same fork
};

// Checks a fork request against the store and builds the fork's SessionForked event (as the JSON
// of POST /events; nothing is written). Its at_position is the origin's last event at or before
// `at`, so the fork's history never changes. Errors: "invalid_parameter" (P < 1, P before the origin's
// first event, no user message to ask again without a prompt, a bad model or prompt, too deep),
// "not_found" (the origin has no events), or the reader's own error.
Result<nlohmann::json> fork_event(const ForkRequest& req, const SessionReader& read);

}  // namespace engram::projections
