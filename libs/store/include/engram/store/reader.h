#pragma once
// Queries over the log. Stateless; every call leases a pooled connection.
#include "engram/core/result.h"
#include "engram/core/strong.h"
#include "engram/core/time.h"
#include "engram/core/uuid.h"
#include "engram/events/event.h"

#include <optional>
#include <string>
#include <vector>

namespace engram::pg {
class Pool;
}

namespace engram::store {

struct ReadQuery {
    GlobalPosition after{0};  // exclusive
    int limit = 100;
    std::optional<std::string> type_glob;
    std::optional<std::string> aggregate_id;
    std::optional<GlobalPosition> until_position;  // inclusive
    std::optional<SysTime> until_time;             // inclusive
};

class Reader {
public:
    explicit Reader(pg::Pool& pool) : pool_(pool) {}
    Result<std::vector<events::Event>> read(const ReadQuery& q);
    Result<std::optional<events::Event>> get(const Uuid& id);
    Result<std::vector<events::Event>> aggregate(const std::string& aggregate_id, AggregateVersion from, int limit);
    Result<GlobalPosition> head();
    Status ping();

private:
    pg::Pool& pool_;
};

// The SQL condition for a type filter (exact, or prefix with a trailing `*`).
std::string type_condition(const std::string& glob, const std::function<std::string(const std::string&)>& quote);

}  // namespace engram::store
