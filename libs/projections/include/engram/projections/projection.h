#pragma once
// Projections: pure folds (state, event) -> state over the events of ONE aggregate, with their state
// as JSON. The same code serves the memory processor (which persists the states), the event store's
// GET /projections/{name}/{id}?as_of=P and the CLI's `engram replay`. See README.md for the state
// shapes, bounds and rules.
//
// Purity: apply() does no I/O, reads no clock and uses no randomness; the output depends only on
// (state, event). Projections are stateless singletons: every function here is thread-safe.
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/result.h"
#include "engram/events/event.h"

namespace engram::projections {

class Projection {
public:
    virtual ~Projection() = default;
    // "conversation", "fast_memory".
    virtual std::string_view name() const = 0;
    // The aggregate whose events feed instance `id` (instance id == aggregate id). Error code
    // "invalid_parameter" when `id` is not of the right kind ("session:..." / "user:...").
    virtual Result<std::string> aggregate_of(std::string_view id) const = 0;
    // The types it folds; apply() returns the state unchanged for any other type.
    virtual std::vector<std::string_view> event_types() const = 0;
    // The state before any event ("position": 0).
    virtual nlohmann::json initial(std::string_view id) const = 0;
    // Pure and deterministic. Returns `state` unchanged when the event is of another aggregate, of a
    // type not folded, or already reflected (e.position <= state.position: redelivery is harmless).
    // Otherwise folds it and sets "position" to e.position. Tolerates missing optional fields.
    // Reads the event's envelope and `data`, never `metadata`: folds straight from the log's table
    // (rebuilds, as_of) do not load it.
    virtual nlohmann::json apply(nlohmann::json state, const events::Event& e) const = 0;
};

// The registered projections; nullptr when unknown.
const Projection* find(std::string_view name);
std::vector<const Projection*> all();

// Folds `evs` (in position order) from initial(id); events of other aggregates are skipped.
nlohmann::json fold(const Projection& p, std::string_view id, const std::vector<events::Event>& evs);
// Continues a fold from a previously computed (e.g. persisted) state: apply() over `evs` in order.
// fold_from(p, fold(p, id, a), b) == fold(p, id, a + b).
nlohmann::json fold_from(const Projection& p, nlohmann::json state, const std::vector<events::Event>& evs);

}  // namespace engram::projections
