#pragma once
// Folding a projection straight from the log's table: the one path of `engram projections rebuild`
// (every instance) and of the store's GET /projections/{name}/{id}?as_of= (one instance).
//
// Only what a fold reads is fetched: the rows of the types the projection folds (`type = ANY`),
// without `metadata` (projections fold `data` only; see projection.h). The checkpoint of an
// instance (the last event of its aggregate of ANY type) comes from a separate query.
#include "engram/core/result.h"
#include "engram/core/strong.h"
#include "engram/core/time.h"
#include "engram/events/event.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace pqxx {
class result;
class transaction_base;
}  // namespace pqxx

namespace engram::projections {
class Projection;
}

namespace engram::pg {
class Pool;
}

namespace engram::store {

// Which part of the log a fold reads.
struct FoldScope {
    std::optional<std::string> aggregate_id;       // one aggregate, or every one
    std::optional<GlobalPosition> until_position;  // inclusive
    std::optional<SysTime> until_time;             // inclusive
};

// Streams the rows `p` folds within `scope`, in position order, in the columns FoldState::add()
// reads, through a cursor in `tx` (one plan for the whole scan: pages by LIMIT would each re-scan
// what the type filter selects), calling on_page for each page of up to `page_rows`.
void scan_fold_rows(pqxx::transaction_base& tx, const projections::Projection& p, const FoldScope& scope,
                    const std::function<void(pqxx::result&&)>& on_page, int page_rows = 5000);
// (aggregate_id, last position, last version) of every aggregate within `scope`, any type.
std::string checkpoints_sql(pqxx::transaction_base& tx, const FoldScope& scope);

struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

// The states folded so far, per instance. One thread adds pages, in position order.
class FoldState {
public:
    struct Instance;
    using Instances = std::unordered_map<std::string, Instance, StringHash, std::equal_to<>>;

    explicit FoldState(const projections::Projection& p);

    struct Instance {
        nlohmann::json state;
        std::int64_t position = 0;  // checkpoint: last event of its aggregate, any type (set_checkpoints)
        std::int64_t version = 0;
    };

    // Folds the rows of a page from scan_fold_rows(). Returns the last position in it (0 if empty).
    std::int64_t add(const pqxx::result& page);
    // Rows of checkpoints_sql(): sets each instance's checkpoint (other aggregates are ignored).
    void set_checkpoints(const pqxx::result& rows);

    // Instances of the projection that have at least one folded event.
    Instances& instances() { return instances_; }
    std::int64_t folded() const { return folded_; }  // events that changed a state
    std::int64_t rows() const { return rows_; }      // rows added

private:
    const projections::Projection& p_;
    Instances instances_;
    std::unordered_map<std::string, bool, StringHash, std::equal_to<>> member_;  // aggregate -> instance of p?
    events::Event scratch_;                                                      // reused per row
    std::int64_t folded_ = 0, rows_ = 0;
};

// GET /projections/{name}/{id}?as_of=: the state of instance `id` (an instance id of `p`) folded
// from the log within `scope` (its aggregate_id is set here), and the position of its aggregate's
// last event in scope (0 when none).
struct AsOf {
    nlohmann::json state;
    std::int64_t position = 0;
};
Result<AsOf> fold_as_of(pg::Pool& pool, const projections::Projection& p, const std::string& id, FoldScope scope);

}  // namespace engram::store
