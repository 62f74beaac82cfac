// schedule, cancel_reminder, list_reminders: ReminderScheduled / ReminderCancelled on the session;
// the memory processor keeps the `reminders` projection and its scheduler fires what is due.
#include <cmath>

#include "engram/core/timezone.h"
#include "engram/http/url.h"
#include "engram/projections/reminders.h"
#include "tools.h"

namespace engram::ai {

namespace {

using nlohmann::json;

constexpr const char* kEnd = "999999999999999999";  // as_of past any position: the log's end

constexpr std::int64_t kMaxAheadSeconds = std::int64_t{5} * 366 * 86400;  // five years
constexpr std::int64_t kPastSlackSeconds = 60;                            // "now" said a little late is still now

SysSeconds to_seconds(SysTime t) { return std::chrono::floor<std::chrono::seconds>(t); }

// The session's reminders, folded from the log to its end (not the persisted state, which lags: a
// reminder scheduled a moment ago in this very run must be there).
Result<json> session_reminders(ToolContext& ctx) {
    if (!ctx.store_get) return Error::make("unavailable", "the event store cannot be read here");
    auto r = ctx.store_get("/projections/reminders/" + http::url_encode(ctx.session_id) + "?as_of=" + kEnd);
    if (!r) return r.error();
    if (r->is_object() && r->contains("state") && (*r)["state"].is_object()) return (*r)["state"];
    return projections::reminders().initial(ctx.session_id);
}

// The zone a time without an offset is read in: the argument, else the user's profile, else UTC.
// The profile is folded from the log, not the persisted state: a `remember` of the zone a moment
// ago in this very run counts. `note` tells the model when a profile value could not be used.
struct Zone {
    TimeZone zone;
    std::string note;
};
Result<Zone> zone_for(ToolContext& ctx, const json& args) {
    if (args.contains("timezone") && args["timezone"].is_string() && !args["timezone"].get<std::string>().empty()) {
        auto z = TimeZone::load(args["timezone"].get<std::string>());
        if (!z) return z.error();
        return Zone{*z, ""};
    }
    std::string name;
    if (!ctx.user_id.empty() && ctx.store_get) {
        auto fm = ctx.store_get("/projections/fast_memory/" + http::url_encode("user:" + ctx.user_id) + "?as_of=" + kEnd);
        if (!fm) return fm.error();
        const json* tz = nullptr;
        if (fm->is_object() && fm->contains("state") && (*fm)["state"].is_object() && (*fm)["state"].contains("profile") &&
            (*fm)["state"]["profile"].is_object() && (*fm)["state"]["profile"].contains("timezone"))
            tz = &(*fm)["state"]["profile"]["timezone"];
        if (tz && tz->is_string()) name = tz->get<std::string>();
    }
    if (name.empty()) return Zone{*TimeZone::load("UTC"), ""};
    if (auto z = TimeZone::load(name)) return Zone{*z, ""};
    // A profile value that is not a zone must not make every reminder fail: UTC, and say so.
    return Zone{*TimeZone::load("UTC"), " (the profile's time zone '" + name.substr(0, 64) +
                                            "' is not an IANA name, so UTC was used; store an IANA name such as "
                                            "Europe/Berlin as the profile's \"timezone\")"};
}

// "2026-12-02T09:00+01:00" (an offset, no seconds) as RFC 3339 wants it: "2026-12-02T09:00:00+01:00".
std::string with_seconds(std::string at) {
    if (at.size() > 16 && at[13] == ':' && (at[16] == 'Z' || at[16] == 'z' || at[16] == '+' || at[16] == '-'))
        at.insert(16, ":00");
    return at;
}

std::string describe(const TimeZone& z, SysSeconds due) { return format_local_rfc3339(z, due) + " (" + z.name() + ")"; }

ToolResult reused(const events::Event& recorded, const char* what) {
    // The effect is in the log (a crash after it, before ToolCompleted): report it, decide nothing anew.
    return ToolResult::ok(std::string(what) + " " + recorded.data.value("reminder_id", "") +
                          (recorded.data.contains("local_time") ? " for " + recorded.data.value("local_time", "") : ""));
}

}  // namespace

Tool make_schedule_tool() {
    return Tool{
        "schedule",
        "Schedule a reminder: at the given time the assistant is triggered again in this conversation with the "
        "reminder's text, and should then tell the user. Give either 'at' (the user's wall-clock time, "
        "'YYYY-MM-DDTHH:MM', read in 'timezone' or the user's profile time zone, else UTC; or RFC 3339 with an "
        "offset) or 'in_minutes'.",
        {{"type", "object"},
         {"properties",
          {{"text", {{"type", "string"}, {"description", "What to remind the user of, e.g. 'Call Anna'."}}},
           {"at", {{"type", "string"}, {"description", "When: '2026-12-02T09:00' (local) or '2026-12-02T08:00:00Z'."}}},
           {"in_minutes", {{"type", "number"}, {"exclusiveMinimum", 0}, {"description", "When, from now."}}},
           {"timezone", {{"type", "string"}, {"description", "IANA time zone of 'at', e.g. 'Europe/Berlin'."}}}}},
         {"required", {"text"}}},
        [](ToolContext& ctx, const json& args) -> ToolResult {
            if (ctx.recorded_effect) return reused(*ctx.recorded_effect, "scheduled reminder");
            auto text = string_arg(args, "text");
            if (!text) return ToolResult::error("schedule needs a non-empty string argument 'text'");
            if (text->size() > 2000) return ToolResult::error("schedule: text is longer than 2000 characters");
            const bool has_at = args.contains("at") && !args["at"].is_null();
            const bool has_in = args.contains("in_minutes") && !args["in_minutes"].is_null();
            if (has_at == has_in) return ToolResult::error("schedule needs exactly one of 'at' and 'in_minutes'");
            auto zoned = zone_for(ctx, args);
            if (!zoned) {
                if (zoned.error().code != "invalid_time_zone") return ToolResult::store_error(zoned.error());
                return ToolResult::error("schedule: " + zoned.error().detail);
            }
            const TimeZone* zone = &zoned->zone;
            const SysSeconds now = to_seconds(ctx.now);
            SysSeconds due;
            if (has_at) {
                std::string at = args["at"].is_string() ? args["at"].get<std::string>().substr(0, 64) : "";
                if (auto instant = at.size() > 16 ? parse_rfc3339(with_seconds(at)) : std::nullopt) {
                    due = to_seconds(*instant);
                } else if (auto local = LocalTime::parse(at)) {
                    due = zone->to_utc(*local);
                } else {
                    return ToolResult::error("schedule: 'at' must be 'YYYY-MM-DDTHH:MM' or RFC 3339, got '" + at.substr(0, 64) +
                                             "'");
                }
            } else {
                if (!args["in_minutes"].is_number()) return ToolResult::error("schedule: 'in_minutes' must be a number");
                double m = args["in_minutes"].get<double>();
                if (!std::isfinite(m) || m <= 0 || m * 60 > static_cast<double>(kMaxAheadSeconds))
                    return ToolResult::error("schedule: 'in_minutes' must be more than 0 and at most five years");
                due = now + std::chrono::seconds(static_cast<std::int64_t>(std::llround(m * 60)));
            }
            auto ahead = (due - now).count();
            if (ahead < -kPastSlackSeconds)
                return ToolResult::error("schedule: " + describe(*zone, due) + " is in the past; it is now " +
                                         describe(*zone, now));
            if (ahead > kMaxAheadSeconds) return ToolResult::error("schedule: at most five years ahead");
            auto state = session_reminders(ctx);
            if (!state) return ToolResult::store_error(state.error());
            if ((*state)["pending"].size() >= projections::kMaxPendingReminders)
                return ToolResult::error("schedule: this conversation already has " +
                                         std::to_string(projections::kMaxPendingReminders) +
                                         " pending reminders; cancel some first");
            auto due_text = *projections::normalize_due_at(format_rfc3339(SysTime(due)));
            json data = {
                {"reminder_id", ctx.effect_id}, {"session_id", ctx.session_id}, {"text", *text},
                {"due_at", due_text},           {"timezone", zone->name()},     {"local_time", format_local_rfc3339(*zone, due)},
                {"channel", ctx.channel},       {"run_id", ctx.run_id},         {"tool_call_id", ctx.tool_call_id}};
            if (!ctx.user_id.empty()) data["user_id"] = ctx.user_id;
            events::NewEvent e{.id = {}, .type = "ReminderScheduled", .aggregate_id = ctx.session_id, .data = std::move(data)};
            if (auto s = ctx.record_effect(std::move(e)); !s) return ToolResult::store_error(s.error());
            return ToolResult::ok("scheduled reminder " + ctx.effect_id + " for " + describe(*zone, due) + ", " + due_text +
                                  zoned->note);
        }};
}

Tool make_cancel_reminder_tool() {
    return Tool{"cancel_reminder",
                "Cancel a pending reminder of this conversation (list_reminders gives the ids).",
                {{"type", "object"},
                 {"properties",
                  {{"reminder_id", {{"type", "string"}, {"description", "The reminder's id."}}},
                   {"reason", {{"type", "string"}, {"description", "Why (optional)."}}}}},
                 {"required", {"reminder_id"}}},
                [](ToolContext& ctx, const json& args) -> ToolResult {
                    if (ctx.recorded_effect) return reused(*ctx.recorded_effect, "cancelled reminder");
                    auto id = string_arg(args, "reminder_id");
                    if (!id) return ToolResult::error("cancel_reminder needs a string argument 'reminder_id'");
                    auto state = session_reminders(ctx);
                    if (!state) return ToolResult::store_error(state.error());
                    bool pending = false;
                    for (const auto& r : (*state)["pending"]) pending = pending || r.value("reminder_id", "") == *id;
                    if (!pending)
                        return ToolResult::error("cancel_reminder: no pending reminder '" + id->substr(0, 64) +
                                                 "' in this conversation (list_reminders shows them)");
                    json data = {{"reminder_id", *id}, {"session_id", ctx.session_id}, {"run_id", ctx.run_id}};
                    if (auto reason = string_arg(args, "reason")) data["reason"] = reason->substr(0, 2000);
                    events::NewEvent e{
                        .id = {}, .type = "ReminderCancelled", .aggregate_id = ctx.session_id, .data = std::move(data)};
                    if (auto s = ctx.record_effect(std::move(e)); !s) return ToolResult::store_error(s.error());
                    return ToolResult::ok("cancelled reminder " + *id);
                }};
}

Tool make_list_reminders_tool() {
    return Tool{"list_reminders",
                "List the pending reminders of this conversation, the earliest first.",
                {{"type", "object"}, {"properties", json::object()}},
                [](ToolContext& ctx, const json&) -> ToolResult {
                    auto state = session_reminders(ctx);
                    if (!state) return ToolResult::store_error(state.error());
                    json out = json::array();
                    for (const auto& r : (*state)["pending"]) {
                        json item = {{"reminder_id", r.value("reminder_id", "")},
                                     {"text", r.value("text", "")},
                                     {"due_at", r.value("due_at", "")},
                                     {"timezone", r.value("timezone", "UTC")}};
                        if (r.contains("local_time")) item["local_time"] = r["local_time"];
                        out.push_back(std::move(item));
                    }
                    return ToolResult::ok(out.empty() ? json("no pending reminders") : out);
                }};
}

}  // namespace engram::ai
