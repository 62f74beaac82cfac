#pragma once
// Parsing of the read endpoints' query parameters into typed queries, with the 400 messages.
#include "engram/store/reader.h"

#include <map>
#include <string>

namespace engram::store {

inline constexpr int kMaxReadLimit = 1000;

// A non-negative decimal integer (positions, versions, limits); nullopt for anything else.
std::optional<std::int64_t> parse_count(const std::string& s);

// GET /events: after, limit (1..1000, default 100), type (glob), aggregate_id, until (position or RFC 3339).
// Error code "invalid_parameter" naming the parameter.
Result<ReadQuery> parse_read_query(const std::map<std::string, std::string>& params);

struct AggregateQuery {
    AggregateVersion from{1};
    int limit = kMaxReadLimit;
};
// GET /aggregates/{id}/events: from_version (>= 1, default 1), limit (1..1000, default 1000).
Result<AggregateQuery> parse_aggregate_query(const std::map<std::string, std::string>& params);

}  // namespace engram::store
