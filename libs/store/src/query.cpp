#include "engram/store/query.h"

#include "engram/core/glob.h"

namespace engram::store {
std::optional<std::int64_t> parse_count(const std::string& s) {
    if (s.empty() || s.size() > 18) return std::nullopt;
    std::int64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + (c - '0');
    }
    return v;
}

namespace {

Error bad(const std::string& name, const std::string& why) {
    return Error::make("invalid_parameter", "query parameter '" + name + "' " + why);
}

Result<int> parse_limit(const std::map<std::string, std::string>& p, int dflt) {
    auto it = p.find("limit");
    if (it == p.end()) return dflt;
    auto v = parse_count(it->second);
    if (!v || *v < 1 || *v > kMaxReadLimit)
        return bad("limit", "must be an integer from 1 to " + std::to_string(kMaxReadLimit) + " (got '" + it->second + "')");
    return static_cast<int>(*v);
}

}  // namespace

Result<ReadQuery> parse_read_query(const std::map<std::string, std::string>& p) {
    ReadQuery q;
    if (auto it = p.find("after"); it != p.end()) {
        auto v = parse_count(it->second);
        if (!v) return bad("after", "must be a non-negative integer position (got '" + it->second + "')");
        q.after = GlobalPosition(*v);
    }
    auto limit = parse_limit(p, 100);
    if (!limit) return std::move(limit).error();
    q.limit = *limit;
    if (auto it = p.find("type"); it != p.end()) {
        if (!glob_valid(it->second))
            return bad("type", "must be a type name, optionally ending with one '*' (got '" + it->second + "')");
        q.type_glob = it->second;
    }
    if (auto it = p.find("aggregate_id"); it != p.end()) {
        if (it->second.empty()) return bad("aggregate_id", "must not be empty");
        q.aggregate_id = it->second;
    }
    if (auto it = p.find("until"); it != p.end()) {
        if (auto v = parse_count(it->second)) {
            q.until_position = GlobalPosition(*v);
        } else if (auto t = parse_rfc3339(it->second)) {
            q.until_time = *t;
        } else {
            return bad("until", "must be a position or an RFC 3339 time (got '" + it->second + "')");
        }
    }
    return q;
}

Result<AggregateQuery> parse_aggregate_query(const std::map<std::string, std::string>& p) {
    AggregateQuery q;
    if (auto it = p.find("from_version"); it != p.end()) {
        auto v = parse_count(it->second);
        if (!v || *v < 1) return bad("from_version", "must be an integer >= 1 (got '" + it->second + "')");
        q.from = AggregateVersion(*v);
    }
    auto limit = parse_limit(p, kMaxReadLimit);
    if (!limit) return std::move(limit).error();
    q.limit = *limit;
    return q;
}

}  // namespace engram::store
