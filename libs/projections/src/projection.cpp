#include "engram/projections/projection.h"

#include "engram/projections/conversation.h"
#include "engram/projections/fast_memory.h"
#include "engram/projections/reminders.h"

namespace engram::projections {

std::vector<const Projection*> all() { return {&conversation(), &fast_memory(), &reminders()}; }

const Projection* find(std::string_view name) {
    for (const Projection* p : all())
        if (p->name() == name) return p;
    return nullptr;
}

nlohmann::json fold_from(const Projection& p, nlohmann::json state, const std::vector<events::Event>& evs) {
    for (const auto& e : evs) state = p.apply(std::move(state), e);
    return state;
}

nlohmann::json fold(const Projection& p, std::string_view id, const std::vector<events::Event>& evs) {
    nlohmann::json state = p.initial(id);
    auto aggregate = p.aggregate_of(id);
    if (!aggregate) return state;  // an invalid id matches no aggregate: nothing to fold
    for (const auto& e : evs) {
        if (e.aggregate_id != *aggregate) continue;
        state = p.apply(std::move(state), e);
    }
    return state;
}

}  // namespace engram::projections
