// The `reminders` projection (see README.md for the state shape and the rules).
#include "engram/projections/reminders.h"

#include <algorithm>

#include "engram/core/time.h"
#include "engram/core/timezone.h"
#include "engram/events/types.h"
#include "util.h"

namespace engram::projections {
namespace {

namespace T = events::types;
using detail::has_string;
using detail::str;
using nlohmann::json;

json* find_in(json& list, const std::string& id) {
    for (auto& r : list)
        if (str(r, "reminder_id") == id) return &r;
    return nullptr;
}

void set_next_due(json& state) {
    const json& p = state["pending"];
    // A persisted state is read back as it was stored: tolerate one without the expected fields.
    state["next_due_at"] = p.empty() || !p.front().is_object() ? json() : json(str(p.front(), "due_at"));
}

void on_scheduled(json& state, const events::Event& e) {
    const json& d = e.data;
    std::string id = str(d, "reminder_id");
    auto due = normalize_due_at(str(d, "due_at"));
    if (id.empty() || !due || str(d, "text").empty()) return;
    json& pending = state["pending"];
    if (find_in(pending, id) || find_in(state["finished"], id) || pending.size() >= kMaxPendingReminders) return;
    json r = {{"reminder_id", id},
              {"text", str(d, "text")},
              {"due_at", *due},
              {"timezone", str(d, "timezone", "UTC")},
              {"scheduled_at", format_rfc3339(e.timestamp)},
              {"event_id", e.id.str()},
              {"position", e.position.value()}};
    for (const char* k : {"local_time", "user_id", "channel"})
        if (has_string(d, k)) r[k] = d[k];
    // Earliest due first; the id breaks ties so every fold orders alike.
    auto at = std::find_if(pending.begin(), pending.end(), [&](const json& o) {
        auto od = str(o, "due_at");
        return od > *due || (od == *due && str(o, "reminder_id") > id);
    });
    pending.insert(at, std::move(r));
}

// A pending reminder leaves for `finished` (status fired / cancelled); anything else is a no-op.
void finish(json& state, const events::Event& e, const std::string& id, const char* status) {
    json& pending = state["pending"];
    auto it = std::find_if(pending.begin(), pending.end(), [&](const json& r) { return str(r, "reminder_id") == id; });
    if (it == pending.end()) return;
    json done = {{"reminder_id", id},
                 {"text", (*it)["text"]},
                 {"due_at", (*it)["due_at"]},
                 {"status", status},
                 {"at", format_rfc3339(e.timestamp)},
                 {"event_id", e.id.str()}};
    pending.erase(it);
    json& finished = state["finished"];
    finished.push_back(std::move(done));
    if (finished.size() > kMaxFinishedReminders) finished.erase(finished.begin());
}

class Reminders final : public Projection {
public:
    std::string_view name() const override { return "reminders"; }

    Result<std::string> aggregate_of(std::string_view id) const override { return detail::session_instance("reminders", id); }

    std::vector<std::string_view> event_types() const override {
        return {T::ReminderScheduled, T::ReminderCancelled, T::TriggerReceived};
    }

    json initial(std::string_view id) const override {
        return json{{"session_id", std::string(id)},
                    {"position", 0},
                    {"pending", json::array()},
                    {"next_due_at", nullptr},
                    {"finished", json::array()}};
    }

    json apply(json state, const events::Event& e) const override {
        if (!state.is_object() || !e.data.is_object()) return state;
        if (!detail::should_apply(state, e, str(state, "session_id"))) return state;
        if (!state["pending"].is_array()) state["pending"] = json::array();
        if (!state["finished"].is_array()) state["finished"] = json::array();
        if (e.type == T::ReminderScheduled) {
            on_scheduled(state, e);
        } else if (e.type == T::ReminderCancelled) {
            finish(state, e, str(e.data, "reminder_id"), "cancelled");
        } else if (e.type == T::TriggerReceived) {
            if (!has_string(e.data, "reminder_id")) return state;  // an ordinary trigger: not ours
            finish(state, e, str(e.data, "reminder_id"), "fired");
        } else {
            return state;
        }
        set_next_due(state);
        state["position"] = e.position.value();
        return state;
    }
};

}  // namespace

std::optional<std::string> normalize_due_at(std::string_view s) {
    auto t = parse_rfc3339(s);
    if (!t) return std::nullopt;
    auto secs = std::chrono::floor<std::chrono::seconds>(t->time_since_epoch()).count();
    auto l = LocalTime::from_utc_seconds(secs);
    if (l.year < 1000 || l.year > 9999) return std::nullopt;
    return l.str() + "Z";
}

const Projection& reminders() {
    static const Reminders p;
    return p;
}

}  // namespace engram::projections
