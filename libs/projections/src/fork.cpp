// Forks: composing a session's history through its origins (see fork.h).
#include "engram/projections/fork.h"

#include "engram/core/text.h"
#include "engram/events/types.h"
#include "engram/projections/conversation.h"
#include "util.h"

namespace engram::projections {
namespace {

using detail::str;
using nlohmann::json;

constexpr std::size_t kMaxPromptChars = 8000;  // the web chat's limit of one message
constexpr std::size_t kMaxModelChars = 128;    // the schema's

// The namespace of fork ids made from an idempotency key.
Uuid fork_ns() { return *Uuid::parse("2b7e9f4c-51d3-4c8a-9e6f-0a3d5c7b1e92"); }

void join(json& into, const json& from, const char* key, std::size_t max) {
    json& a = into[key];
    if (!a.is_array()) a = json::array();
    if (!from.contains(key) || !from[key].is_array()) return;
    json joined = from[key];
    for (auto& x : a) joined.push_back(std::move(x));
    if (joined.size() > max) joined.erase(joined.begin(), joined.begin() + static_cast<std::ptrdiff_t>(joined.size() - max));
    a = std::move(joined);
}

std::string channel_of(const std::string& session) {
    auto rest = session.substr(8);  // after "session:"
    return rest.substr(0, rest.find(':'));
}

}  // namespace

std::optional<ForkOrigin> fork_origin(const events::Event& e) {
    if (e.type != events::types::SessionForked || !e.data.is_object()) return std::nullopt;
    auto origin = str(e.data, "origin_session_id");
    auto at = e.data.find("at_position");
    if (origin.empty() || at == e.data.end() || !at->is_number_integer() || at->get<std::int64_t>() < 1) return std::nullopt;
    return ForkOrigin{origin, at->get<std::int64_t>()};
}

SessionReader store_session_reader(PageGetter get) {
    return [get = std::move(get)](const std::string& session, std::int64_t up_to) -> Result<std::vector<events::Event>> {
        std::vector<events::Event> out;
        constexpr int kPage = 1000;
        for (std::int64_t from = 1;;) {
            auto body = get(session, from, kPage);
            if (!body) return body.error();
            if (!body->is_object() || !body->contains("events") || !(*body)["events"].is_array())
                return Error::make("event_store", "reading " + session + ": unexpected answer");
            const auto& page = (*body)["events"];
            for (const auto& j : page) {
                auto e = events::Event::from_json(j);
                if (!e) return e.error();
                if (e->position.value() > up_to) return out;  // versions follow positions within an aggregate
                from = e->version.value() + 1;
                out.push_back(std::move(*e));
            }
            if (page.size() < static_cast<std::size_t>(kPage)) return out;
        }
    };
}

Result<std::vector<Segment>> inherited_history(const events::Event& first, const SessionReader& read) {
    std::vector<Segment> chain;  // newest origin first, reversed at the end
    auto origin = fork_origin(first);
    while (origin) {
        if (static_cast<int>(chain.size()) >= kMaxForkDepth)
            return Error::make("fork_too_deep", "a fork's origins go more than " + std::to_string(kMaxForkDepth) + " deep");
        auto evs = read(origin->session_id, origin->position);
        if (!evs) return evs.error();
        std::optional<ForkOrigin> next;
        if (!evs->empty()) next = fork_origin(evs->front());
        chain.push_back({origin->session_id, std::move(*evs)});
        origin = std::move(next);
    }
    return std::vector<Segment>(std::make_move_iterator(chain.rbegin()), std::make_move_iterator(chain.rend()));
}

Result<std::vector<Segment>> session_history(const std::string& session, std::int64_t up_to, const SessionReader& read) {
    auto own = read(session, up_to);
    if (!own) return own.error();
    std::vector<Segment> history;
    if (!own->empty()) {
        auto inherited = inherited_history(own->front(), read);
        if (!inherited) return inherited.error();
        history = std::move(*inherited);
    }
    history.push_back({session, std::move(*own)});
    return history;
}

json conversation_view(const std::vector<Segment>& history, std::int64_t before) {
    const auto& p = conversation();
    json view;
    for (const auto& seg : history) {
        std::vector<events::Event> evs;
        for (const auto& e : seg.events)
            if (e.position.value() < before) evs.push_back(e);
        json state = fold(p, seg.session_id, evs);
        if (view.is_null()) {
            view = std::move(state);
            continue;
        }
        // Inherited entries keep the session they were written in.
        for (const char* key : {"messages", "tool_calls"})
            for (auto& x : view[key])
                if (x.is_object() && !x.contains("session_id")) x["session_id"] = view["session_id"];
        join(state, view, "messages", kMaxMessages);
        join(state, view, "tool_calls", kMaxToolCalls);
        join(state, view, "thinking", kMaxThinking);
        join(state, view, "deliveries", kMaxDeliveries);
        view = std::move(state);
    }
    return view.is_null() ? json::object() : view;
}

const json* last_user_message(const json& view) {
    if (!view.is_object() || !view.contains("messages") || !view["messages"].is_array()) return nullptr;
    const auto& msgs = view["messages"];
    for (auto it = msgs.rbegin(); it != msgs.rend(); ++it)
        if (it->is_object() && it->value("role", "") == "user") return &*it;
    return nullptr;
}

Result<json> fork_event(const ForkRequest& req, const SessionReader& read) {
    auto bad = [](std::string detail) { return Error::make("invalid_parameter", std::move(detail)); };
    if (auto agg = conversation().aggregate_of(req.origin); !agg) return agg.error();
    if (req.at < 1) return bad("'at' must be a global position >= 1 (got " + std::to_string(req.at) + ")");
    if (!req.prompt.empty() && trim(req.prompt).empty()) return bad("'prompt' must not be blank when given");
    if (utf8_length(req.prompt) > kMaxPromptChars)
        return bad("'prompt' is longer than " + std::to_string(kMaxPromptChars) + " characters");
    if (req.model.size() > kMaxModelChars) return bad("'model' is longer than " + std::to_string(kMaxModelChars) + " characters");

    auto history = session_history(req.origin, req.at, read);
    if (!history) {
        if (history.error().code == "fork_too_deep") return bad(history.error().detail);
        return history.error();
    }
    if (history->back().events.empty()) {
        auto all = read(req.origin, kAllPositions);
        if (!all) return all.error();
        if (all->empty()) return Error::make("not_found", "no session '" + req.origin + "' (it has no events)");
        return bad("position " + std::to_string(req.at) + " is before the first event of " + req.origin + " (position " +
                   std::to_string(all->front().position.value()) + "): a fork needs at least one event of its origin");
    }
    const auto depth = static_cast<int>(history->size());
    if (depth > kMaxForkDepth)
        return bad(req.origin + " is a fork " + std::to_string(depth - 1) + " deep: forks go at most " +
                   std::to_string(kMaxForkDepth) + " deep");
    if (req.prompt.empty() && !last_user_message(conversation_view(*history)))
        return bad("no user message at or before position " + std::to_string(req.at) + " of " + req.origin +
                   " to ask again: give a prompt");
    // The fork acts for the origin's user: the newest event that names one.
    std::string user;
    for (auto seg = history->rbegin(); seg != history->rend() && user.empty(); ++seg)
        for (auto e = seg->events.rbegin(); e != seg->events.rend() && user.empty(); ++e) user = str(e->data, "user_id");
    if (user.empty()) return bad(req.origin + " names no user up to position " + std::to_string(req.at));

    // Recorded as the origin's last event up to `at`: a later event of the origin can never fall
    // inside the fork's history, however far ahead `at` was asked.
    const std::int64_t at = history->back().events.back().position.value();
    const Uuid fork_uuid = req.key.empty() ? Uuid::v4() : Uuid::v5(fork_ns(), "fork:" + req.origin + "\n" + req.key);
    const std::string fork = "session:" + channel_of(req.origin) + ":" + fork_uuid.str();
    const std::string id = Uuid::v5(fork_uuid, "forked").str();
    json data = {
        {"origin_session_id", req.origin}, {"at_position", at}, {"forked_session_id", fork}, {"user_id", user}, {"depth", depth}};
    if (!req.model.empty()) data["model"] = req.model;
    if (!req.prompt.empty()) data["prompt"] = req.prompt;
    if (!req.source.empty()) data["source"] = req.source;
    return json{{"id", id},
                {"type", events::types::SessionForked},
                {"aggregate_id", fork},
                {"data", std::move(data)},
                {"metadata",
                 {{"source", req.source.empty() ? std::string("fork") : "fork:" + req.source},
                  {"correlation_id", id},
                  {"user_id", user},
                  {"session_id", fork}}}};
}

}  // namespace engram::projections
