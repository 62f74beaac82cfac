#include "agent.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "engram/core/json.h"
#include "engram/core/time.h"
#include "engram/core/uuid.h"
#include "engram/events/types.h"
#include "engram/http/client.h"
#include "engram/log/log.h"
#include "engram/projections/projections.h"
#include "tools.h"

namespace engram::ai {

using nlohmann::json;

namespace {

std::shared_ptr<spdlog::logger> logger() {
    static auto l = log::get("ai-processor");
    return l;
}

const std::vector<std::string> kChannels = {"telegram", "web", "webhook", "api", "email", "slack"};

bool is_channel(const std::string& c) { return std::find(kChannels.begin(), kChannels.end(), c) != kChannels.end(); }

std::string str_field(const json& j, const char* k) {
    return j.is_object() && j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
}

Error fenced(std::string detail) { return Error::make("fenced", std::move(detail)); }

// A non-2xx answer of the store. extra.status lets processor::is_transient tell an unavailable
// store (503, 429, 5xx) from a refusal.
Error store_error(std::string what, int status, const std::string& body, const std::string& code = "") {
    Error e = Error::make("event_store", what + ": HTTP " + std::to_string(status) + " " + body);
    e.extra = {{"status", status}, {"error", code}};
    return e;
}

// A session keeps moving under a run only while others write to it; a run that never gets its
// append in is given back to the runtime (transient) to start over from a fresh read.
constexpr int kMaxVersionRetries = 50;

// The event store, as the run needs it. One per run (http::Client is not thread-safe).
class Store {
public:
    Store(const std::string& url, const std::string& token) : client_(url, opts(token)) {}

    // The session's events from version `from` on (paged).
    Result<std::vector<events::Event>> session_events(const std::string& session, std::int64_t from) {
        std::vector<events::Event> out;
        for (;;) {
            auto r = client_.get("/aggregates/" + http::url_encode(session) + "/events?from_version=" + std::to_string(from) +
                                 "&limit=1000");
            if (!r) return r.error();
            if (r->status == 404) return out;
            if (r->status != 200) return store_error("reading " + session, r->status, r->body);
            auto body = r->json(events::kMaxStoreAnswerDepth);
            if (!body.is_object() || !body.contains("events") || !body["events"].is_array())
                return Error::make("event_store", "reading " + session + ": unexpected answer");
            for (const auto& j : body["events"]) {
                auto e = events::Event::from_json(j);
                if (!e) return e.error();
                out.push_back(std::move(*e));
            }
            if (body["events"].size() < 1000) return out;
            from = out.back().version.value() + 1;
        }
    }

    // GET of a store path: the JSON body on 200, null on 404.
    Result<json> get_json(const std::string& path) {
        auto r = client_.get(path);
        if (!r) return r.error();
        if (r->status == 404) return json();
        if (r->status != 200) return store_error("reading " + path, r->status, r->body);
        auto body = r->json(events::kMaxStoreAnswerDepth);
        if (body.is_discarded()) return Error::make("event_store", "reading " + path + ": unexpected answer");
        return body;
    }

    // One page of a session's events (a 404 is an empty page).
    Result<json> page(const std::string& session, std::int64_t from, int limit) {
        auto r = client_.get("/aggregates/" + http::url_encode(session) + "/events?from_version=" + std::to_string(from) +
                             "&limit=" + std::to_string(limit));
        if (!r) return r.error();
        if (r->status == 404) return json{{"events", json::array()}};
        if (r->status != 200) return store_error("reading " + session, r->status, r->body);
        return r->json(events::kMaxStoreAnswerDepth);
    }

    // Reads other sessions' events up to a position: the origins of a fork (fork.h).
    projections::SessionReader reader() {
        return projections::store_session_reader(
            [this](const std::string& session, std::int64_t from, int limit) { return page(session, from, limit); });
    }

    // "" when the user has no fast memory (404) or it cannot be read (logged: the run goes on).
    std::string fast_memory(const std::string& user_id) {
        if (user_id.empty()) return "";
        auto r = client_.get("/projections/fast_memory/" + http::url_encode("user:" + user_id));
        if (!r) {
            logger()->warn("fast memory of {}: {}", user_id, r.error().detail);
            return "";
        }
        if (r->status != 200) {
            if (r->status != 404) logger()->warn("fast memory of {}: HTTP {}", user_id, r->status);
            return "";
        }
        auto body = r->json(events::kMaxStoreAnswerDepth);
        if (!body.is_object() || !body.contains("state")) return "";
        return projections::fast_memory_summary(body["state"]);
    }

    // From here on, appends to `session` are fenced: expected_version = `version` (the last version
    // the run has read), advanced by the run's own appends.
    void guard(std::string session, std::string trigger_id, std::int64_t version, std::function<bool()> owns) {
        session_ = std::move(session);
        trigger_id_ = std::move(trigger_id);
        known_ = version;
        owns_ = std::move(owns);
    }

    // All-or-nothing append of events of one aggregate (the header explains the fencing). A replay
    // (200: the same events already stored) is fine.
    Status append(const std::vector<events::NewEvent>& evs) {
        if (evs.empty()) return ok();
        const bool guarded = evs[0].aggregate_id == session_;
        for (int conflicts = 0;; ++conflicts) {
            if (owns_ && !owns_()) return fenced("the partition's lease is lost: " + evs[0].type + " not appended");
            json body;
            if (evs.size() == 1) {
                body = evs[0].to_json();
            } else {
                body = {{"aggregate_id", evs[0].aggregate_id}, {"events", json::array()}};
                for (const auto& e : evs) body["events"].push_back(e.to_json());
            }
            if (guarded) body["expected_version"] = known_;
            auto r = client_.post_json("/events", body);
            if (!r) return r.error();
            if (r->status == 200 || r->status == 201) {
                auto answer = r->json(events::kMaxStoreAnswerDepth);
                std::vector<std::int64_t> versions;
                if (answer.is_object() && answer.contains("events") && answer["events"].is_array())
                    for (const auto& a : answer["events"])
                        if (a.is_object() && a.contains("aggregate_version") && a["aggregate_version"].is_number_integer())
                            versions.push_back(a["aggregate_version"].get<std::int64_t>());
                if (versions.size() != evs.size())
                    return Error::make("event_store",
                                       "append of " + evs[0].type + ": unexpected answer " + r->body.substr(0, 200));
                for (const auto& e : evs)
                    if (e.id) written_.insert(e.id->str());
                if (guarded) known_ = advance_version(known_, versions);
                return ok();
            }
            auto j = r->json();
            std::string code = j.is_object() ? str_field(j, "error") : "";
            if (r->status == 409 && code == "id_conflict")
                // The same deterministic step with other content: another instance recorded its own
                // answer. Going on would build on a view the log does not hold.
                return fenced("append of " + evs[0].type + " (" + (evs[0].id ? evs[0].id->str() : "") +
                              "): this step is recorded with other content: another instance is running the trigger");
            if (r->status == 409 && code == "version_conflict" && guarded) {
                auto after = session_events(session_, known_ + 1);
                if (!after) return after.error();
                auto v = judge_conflict(*after, trigger_id_, written_, known_);
                if (v.fenced)
                    return fenced("another instance is running the trigger (" + v.detail + " appended meanwhile); " +
                                  evs[0].type + " not appended");
                if (conflicts >= kMaxVersionRetries)
                    return processor::transient(Error::make(
                        "event_store", "append of " + evs[0].type + " to " + session_ + ": the session kept changing (" +
                                           std::to_string(conflicts + 1) + " version conflicts)"));
                logger()->debug("append of {} to {}: the session moved from version {} to {}; retrying", evs[0].type, session_,
                                known_, v.version);
                known_ = v.version;
                continue;
            }
            return store_error("append of " + evs[0].type + " to " + evs[0].aggregate_id, r->status, r->body, code);
        }
    }

private:
    static http::ClientOptions opts(const std::string& token) {
        http::ClientOptions o;
        o.timeout = std::chrono::seconds(15);
        o.response_limit = http::kStorePageResponseLimit;  // pages of up to 1000 events
        if (!token.empty()) o.default_headers.emplace_back("Authorization", "Bearer " + token);
        return o;
    }
    http::Client client_;
    std::string session_, trigger_id_;
    std::int64_t known_ = 0;
    std::set<std::string> written_;  // ids this run appended (created or replayed)
    std::function<bool()> owns_;
};

json usage_json(const llm::Usage& u) {
    return {{"prompt_tokens", u.prompt_tokens}, {"completion_tokens", u.completion_tokens}, {"total_tokens", u.total_tokens}};
}

void add_usage(llm::Usage& sum, const json& u) {
    if (!u.is_object()) return;
    sum.prompt_tokens += u.value("prompt_tokens", 0);
    sum.completion_tokens += u.value("completion_tokens", 0);
    sum.total_tokens += u.value("total_tokens", 0);
}

// What a run's prompt is built from: the session's conversation before the trigger, composed through
// the forks the session comes from (fork.h), so forks of forks compose here and nowhere else.
struct History {
    json view;               // the conversation view the prompt shows
    std::string reask;       // a SessionForked without a prompt: the origin's user message asked again
    bool fork = false;       // the session is a fork
    std::string fork_model;  // the model the fork was made with ("" = the configured one)
};

// `evs`: the session's events read from version `from`; `before`: those before the trigger.
Result<History> load_history(Store& store, const events::Event& t, const std::string& session,
                             const std::vector<events::Event>& evs, std::int64_t from, const std::vector<events::Event>& before) {
    History h;
    auto reader = store.reader();
    // Whether the session is a fork is said by its first event, which a windowed read may not hold.
    std::optional<events::Event> first;
    if (t.aggregate_id == session && t.version.value() == 1) {
        first = t;
    } else if (from == 1) {
        if (!evs.empty()) first = evs.front();
    } else {
        auto head = store.page(session, 1, 1);
        if (!head) return head.error();
        if (head->contains("events") && (*head)["events"].is_array() && !(*head)["events"].empty()) {
            auto e = events::Event::from_json((*head)["events"][0]);
            if (!e) return e.error();
            first = std::move(*e);
        }
    }
    std::vector<projections::Segment> segments;
    if (first && first->type == events::types::SessionForked) {
        h.fork = true;
        h.fork_model = str_field(first->data, "model");
    }
    // The inherited history is read only when the window reaches the fork's start: a long fork's
    // prompt is its own latest messages, and its age must not make every run read its origins.
    if (first && from == 1) {
        auto inherited = projections::inherited_history(*first, reader);
        if (!inherited && inherited.error().code != "fork_too_deep") return inherited.error();
        if (inherited)
            segments = std::move(*inherited);
        else
            logger()->warn("{}: {}; the run sees only the session's own events", session, inherited.error().detail);
    }
    segments.push_back({session, before});
    std::int64_t cut = projections::kAllPositions;
    if (t.type == events::types::SessionForked && str_field(t.data, "prompt").empty()) {
        // Asked again: the run sees what came before that message, as its first run did.
        const auto whole = projections::conversation_view(segments);
        if (const auto* m = projections::last_user_message(whole)) {
            h.reask = str_field(*m, "text");
            cut = m->value("position", projections::kAllPositions);
        }
    }
    h.view = projections::conversation_view(segments, cut);
    return h;
}

std::string tool_content(const json& result, bool is_error) {
    std::string s = result.is_string() ? result.get<std::string>() : result.dump();
    return is_error ? "Error: " + s : s;
}

}  // namespace

ConflictVerdict judge_conflict(const std::vector<events::Event>& after, const std::string& trigger_id,
                               const std::set<std::string>& written, std::int64_t known) {
    ConflictVerdict v;
    v.version = known;
    for (const auto& e : after) {
        const auto id = e.id.str();
        if (id != trigger_id && str_field(e.metadata, "causation_id") == trigger_id && !written.count(id)) {
            v.fenced = true;
            v.detail = e.type + " " + id + " at version " + std::to_string(e.version.value());
            return v;
        }
        v.version = std::max(v.version, e.version.value());
    }
    return v;
}

std::int64_t advance_version(std::int64_t known, const std::vector<std::int64_t>& stored_versions) {
    if (stored_versions.empty() || stored_versions.front() > known + 1) return known;
    return std::max(known, stored_versions.back());
}

std::string system_prompt(const std::string& fast_memory_summary, const json& history) {
    std::string s =
        "You are engram, a personal AI assistant. You act only through tools: use send_message to say "
        "anything to the user (plain text you write without a tool is also delivered as your final "
        "answer), remember to store lasting facts about the user, recall to search what you stored "
        "earlier, think to reason privately, schedule to be reminded of something later (list_reminders "
        "and cancel_reminder manage them; a reminder that falls due comes back to you as a message "
        "starting with \"Reminder:\", to pass on to the user), and call task_complete when the request is "
        "handled. Store the user's time zone as a profile memory with the key \"timezone\" (an IANA name "
        "such as Europe/Berlin) when you learn it.";
    s += "\n\n## What you know about the user\n";
    s += fast_memory_summary.empty() ? std::string("(nothing yet)") : fast_memory_summary;
    s += "\n\n## The conversation so far (oldest first)\n";
    if (!history.is_array() || history.empty()) {
        s += "(this is the first message)";
    } else {
        for (const auto& m : history) s += str_field(m, "role") + ": " + str_field(m, "text") + "\n";
    }
    return s;
}

Agent::Agent(AgentOptions o) : o_(std::move(o)) {}

processor::Handler Agent::handler() {
    return [this](processor::Context& ctx) -> Status {
        RunControl control{.owns = [&ctx] { return ctx.owns(); }, .stopping = [&ctx] { return ctx.stopping(); }};
        auto s = run(ctx.event(), control);
        if (!s && s.error().code == "fenced") logger()->warn("run for {} fenced: {}", ctx.event().id.str(), s.error().detail);
        return s;
    };
}

Status Agent::run(const events::Event& t, const RunControl& control) {
    if (t.type != "TriggerReceived" && t.type != "MessageReceived" && t.type != events::types::SessionForked) return ok();
    const json& d = t.data;
    if (t.type == "MessageReceived" && d.value("edited", false) == true) return ok();  // edits are not answered

    const std::string tid = t.id.str();
    auto step_id = [&](const std::string& step) { return Uuid::v5(t.id, step); };
    const std::string run_id = Uuid::v5(t.id, "run").str();  // the catalog's run_id: v5(trigger id, "run")
    const std::string session = str_field(d, "session_id").empty() ? t.aggregate_id : str_field(d, "session_id");
    const bool forked = t.type == events::types::SessionForked;
    std::string user_id = str_field(d, "user_id");
    if (user_id.empty()) user_id = str_field(t.metadata, "user_id");
    std::string correlation = str_field(t.metadata, "correlation_id");
    if (correlation.empty()) correlation = tid;
    std::string channel = str_field(d, "channel");
    if (!is_channel(channel) && session.rfind("session:", 0) == 0) {
        auto rest = session.substr(8);
        channel = rest.substr(0, rest.find(':'));
    }
    if (!is_channel(channel)) channel = "api";
    json reply_to = t.type == "MessageReceived" && d.contains("message_id") ? d["message_id"] : json();

    auto log = logger();
    // Checked before each model call and tool run; appends check owns() themselves (Store::append).
    auto may_work = [&](const std::string& what) -> Status {
        if (control.owns && !control.owns()) return fenced("the partition's lease is lost: " + what + " not started");
        if (control.stopping && control.stopping())
            return Error::make("stopping", "the processor is stopping: " + what + " not started; the run resumes from the log");
        return ok();
    };
    if (auto s = may_work("run " + run_id); !s) return s;
    Store store(o_.event_store_url, o_.api_token);

    // The run's events already in the log (all after the trigger), and the conversation before it.
    // Only a window before the trigger is read: the prompt holds the last `history_messages`
    // messages, so a session's age must not make every run slower.
    const std::int64_t window = std::max<std::int64_t>(200, static_cast<std::int64_t>(o_.history_messages) * 10);
    const std::int64_t from = session == t.aggregate_id ? std::max<std::int64_t>(1, t.version.value() - window) : 1;
    auto evs = store.session_events(session, from);
    if (!evs) return evs.error();
    // Everything up to here is the view the run builds on; it writes only on top of it.
    store.guard(session, tid, evs->empty() ? 0 : evs->back().version.value(), control.owns);
    std::map<std::string, events::Event> recorded;  // id -> event
    std::vector<events::Event> before;              // the conversation before the trigger
    for (auto& e : *evs) {
        if (str_field(e.metadata, "causation_id") == tid)
            recorded.emplace(e.id.str(), e);
        else if (e.position.value() < t.position.value() && e.id != t.id)
            before.push_back(e);
    }
    auto find = [&](const std::string& step) -> const events::Event* {
        auto it = recorded.find(step_id(step).str());
        return it == recorded.end() ? nullptr : &it->second;
    };
    if (find("completed") || find("failed")) {
        log->debug("run {} for {} already finished", run_id, tid);
        return ok();
    }

    // Double-texting. A message an earlier run answered together with its own starts no run.
    const auto* recorded_start = find("started");
    if (!recorded_start && t.type == "MessageReceived") {
        for (const auto& e : *evs) {
            if (e.type != "AIProcessingStarted" || !e.data.contains("merged_event_ids") || !e.data["merged_event_ids"].is_array())
                continue;
            for (const auto& m : e.data["merged_event_ids"])
                if (m == tid) {
                    log->info("message {} was answered together with run {}: no run of its own", tid,
                              str_field(e.data, "run_id"));
                    return ok();
                }
        }
    }
    // Which later messages this run answers too: recorded at its start; for a new run, those of the
    // session with no run of their own yet, after a short wait for the rest of a burst.
    std::vector<events::Event> merged;
    if (recorded_start) {
        if (recorded_start->data.contains("merged_event_ids") && recorded_start->data["merged_event_ids"].is_array())
            for (const auto& m : recorded_start->data["merged_event_ids"])
                for (const auto& e : *evs)
                    if (m.is_string() && e.id.str() == m.get<std::string>()) merged.push_back(e);
    } else if (t.type == "MessageReceived" && o_.double_texting == "merge") {
        auto age = std::chrono::system_clock::now() - t.timestamp;
        if (age >= std::chrono::milliseconds(0) && age < o_.debounce) {
            auto until = std::chrono::steady_clock::now() + (o_.debounce - age);
            while (std::chrono::steady_clock::now() < until) {
                if (auto s = may_work("run " + run_id); !s) return s;
                std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
                    until - std::chrono::steady_clock::now(), std::chrono::milliseconds(100)));
            }
            auto more = store.session_events(session, evs->empty() ? from : evs->back().version.value() + 1);
            if (!more) return more.error();
            evs->insert(evs->end(), more->begin(), more->end());
            store.guard(session, tid, evs->empty() ? 0 : evs->back().version.value(), control.owns);
        }
        std::set<std::string> claimed;  // messages with a run of their own, or merged into one
        for (const auto& e : *evs) {
            if (e.type != "AIProcessingStarted") continue;
            claimed.insert(str_field(e.data, "trigger_event_id"));
            if (e.data.contains("merged_event_ids") && e.data["merged_event_ids"].is_array())
                for (const auto& m : e.data["merged_event_ids"])
                    if (m.is_string()) claimed.insert(m.get<std::string>());
        }
        for (const auto& e : *evs) {
            if (merged.size() >= 20) break;
            if (e.position.value() <= t.position.value() || e.type != "MessageReceived" || e.data.value("edited", false) == true)
                continue;
            if (!claimed.count(e.id.str())) merged.push_back(e);
        }
    }

    auto stamp = [&](events::NewEvent e, const std::string& step) {
        e.id = step_id(step);
        e.metadata = {{"causation_id", tid}, {"correlation_id", correlation}, {"source", o_.source}, {"session_id", session}};
        if (!user_id.empty()) e.metadata["user_id"] = user_id;
        return e;
    };

    auto history = load_history(store, t, session, *evs, from, before);
    if (!history) return history.error();

    // Provider and prompt. Every run in a fork (later messages, its reminders) keeps the fork's model.
    std::string model_override = t.type == "TriggerReceived" || forked ? str_field(d, "model") : "";
    if (model_override.empty() && history->fork) model_override = history->fork_model;
    auto provider = o_.make_provider(model_override);
    std::string model = provider->model();
    // A fork is an alternative past: what it says must never reach the origin's chat or inbox.
    if (history->fork && (channel == "telegram" || channel == "email" || channel == "slack")) channel = "api";
    json msgs = history->view.value("messages", json::array());
    json last = json::array();
    for (std::size_t i = msgs.size() > o_.history_messages ? msgs.size() - o_.history_messages : 0; i < msgs.size(); ++i)
        last.push_back(msgs[i]);

    std::string user_text;
    if (forked) {
        user_text = str_field(d, "prompt").empty() ? history->reask : str_field(d, "prompt");
        if (user_text.empty()) user_text = "(no message to answer)";
    } else if (t.type == "TriggerReceived") {
        user_text = str_field(d, "message");
        if (d.contains("context") && d["context"].is_object() && !d["context"].empty())
            user_text += "\n\nContext: " + d["context"].dump();
    } else {
        auto text_of = [](const json& md) {
            auto text = str_field(md, "text");
            if (!text.empty()) return text;
            auto n = md.contains("attachments") && md["attachments"].is_array() ? md["attachments"].size() : 0;
            return n ? "(the user sent " + std::to_string(n) + " attachment(s) without text)" : std::string("(empty message)");
        };
        user_text = text_of(d);
        for (const auto& m : merged) user_text += "\n" + text_of(m.data);  // one burst, read as one message
    }

    std::vector<llm::Message> messages;
    // The trigger's commit time, not the clock: "tomorrow at 9" reads the same on every attempt.
    messages.push_back(
        {"system",
         system_prompt(store.fast_memory(user_id), last) + "\n\nThe time now (UTC): " + format_rfc3339(t.timestamp),
         {},
         {}});
    messages.push_back({"user", user_text, {}, {}});

    llm::Request req;
    req.messages = messages;
    for (const auto& tool : all_tools()) req.tools.push_back({tool.name, tool.description, tool.parameters});

    auto started_at = std::chrono::system_clock::now();
    if (const auto* s = find("started")) {
        started_at = s->timestamp;
        log->info("resuming run {} for {} ({} events recorded)", run_id, tid, recorded.size());
    } else {
        json data = {{"run_id", run_id},     {"trigger_event_id", tid},      {"trigger_type", t.type},
                     {"model", model},       {"provider", o_.provider_kind}, {"max_iterations", o_.max_iterations},
                     {"session_id", session}};
        if (!user_id.empty()) data["user_id"] = user_id;
        if (!merged.empty()) {
            data["merged_event_ids"] = json::array();
            for (const auto& m : merged) data["merged_event_ids"].push_back(m.id.str());
            log->info("run {}: answers {} later message(s) of the session with its trigger", run_id, merged.size());
        }
        if (auto s = store.append(
                {stamp({.id = {}, .type = "AIProcessingStarted", .aggregate_id = session, .data = data}, "started")});
            !s)
            return s.error();
    }

    llm::Usage usage;
    std::set<std::string> messages_sent;  // MessageGenerated ids of the run
    for (const auto& [id, e] : recorded)
        if (e.type == "MessageGenerated") messages_sent.insert(id);
    auto duration_ms = [&] {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now() - started_at).count();
        return std::max<std::int64_t>(ms, 0);
    };
    auto completed = [&](const std::string& reason, int iterations, const std::string& summary) {
        json data = {{"stop_reason", reason},        {"iterations", iterations},
                     {"usage", usage_json(usage)},   {"messages_sent", messages_sent.size()},
                     {"duration_ms", duration_ms()}, {"run_id", run_id},
                     {"trigger_event_id", tid}};
        if (!summary.empty()) data["summary"] = summary;
        return stamp({.id = {}, .type = "AIProcessingCompleted", .aggregate_id = session, .data = data}, "completed");
    };

    for (int n = 1; n <= o_.max_iterations; ++n) {
        const std::string it = "iter:" + std::to_string(n);
        llm::Message assistant{"assistant", "", {}, {}};

        if (const auto* call0 = find(it + ":call:0")) {
            // Recorded: rebuild the assistant message, do not ask the model again.
            if (const auto* th = find(it + ":thinking")) assistant.content = str_field(th->data, "text");
            for (int k = 0;; ++k) {
                const auto* c = find(it + ":call:" + std::to_string(k));
                if (!c) break;
                assistant.tool_calls.push_back({str_field(c->data, "tool_call_id"), str_field(c->data, "tool"),
                                                c->data.value("arguments", json::object()), str_field(c->data, "raw_arguments")});
            }
            add_usage(usage, call0->data.value("usage", json()));
            log->debug("run {}: iteration {} rebuilt from the log", run_id, n);
        } else {
            if (auto s = may_work("model call of iteration " + std::to_string(n)); !s) return s;
            req.messages = messages;
            auto live = open_deltas(o_.publish_delta, o_.deltas, session, run_id, n, req);
            auto c = provider->complete(req);
            live.reset();  // the pieces end before the answer is recorded
            if (!c) {
                const Error& err = c.error();
                log->warn("run {}: model call of iteration {} failed: {} ({})", run_id, n, err.code, err.detail);
                json data = {{"reason", err.code},
                             {"detail", err.detail},
                             {"iteration", n},
                             {"usage", usage_json(usage)},
                             {"run_id", run_id},
                             {"trigger_event_id", tid},
                             {"retryable", err.code == "llm_unreachable" || err.code == "llm_rate_limited"}};
                if (err.extra.is_object()) {
                    if (err.extra.contains("attempts") && err.extra["attempts"].is_number_integer() &&
                        err.extra["attempts"].get<int>() >= 1)
                        data["attempts"] = err.extra["attempts"];
                    if (err.extra.contains("status") && err.extra["status"].is_number_integer()) {
                        int st = err.extra["status"].get<int>();
                        if (st >= 100 && st <= 599) data["http_status"] = st;
                    }
                    for (const char* k : {"tool", "tool_call_id", "raw_arguments"})
                        if (err.extra.contains(k)) data[k] = err.extra[k];
                }
                // The model's words may reach the detail: keep the failure storable (no U+0000).
                replace_nul(data);
                if (auto s = store.append(
                        {stamp({.id = {}, .type = "AIProcessingFailed", .aggregate_id = session, .data = data}, "failed")});
                    !s)
                    return s.error();
                return ok();  // recorded: no endless retries
            }
            add_usage(usage, usage_json(c->usage));
            assistant = c->message;
            assistant.role = "assistant";

            if (assistant.tool_calls.empty()) {
                // A final answer: the message and the end of the run, together.
                std::vector<events::NewEvent> batch;
                if (assistant.content.find_first_not_of(" \t\r\n") != std::string::npos) {
                    json data = {{"text", assistant.content},
                                 {"channel", channel},
                                 {"session_id", session},
                                 {"run_id", run_id},
                                 {"iteration", n}};
                    if (!user_id.empty()) data["user_id"] = user_id;
                    if (!reply_to.is_null()) data["reply_to"] = reply_to;
                    auto e = stamp({.id = {}, .type = "MessageGenerated", .aggregate_id = session, .data = data}, it + ":final");
                    messages_sent.insert(e.id->str());
                    batch.push_back(std::move(e));
                }
                batch.push_back(completed("end_turn", n, ""));
                if (auto s = store.append(batch); !s) return s.error();
                log->info("run {}: completed (end_turn) after {} iteration(s)", run_id, n);
                return ok();
            }

            // Record the answer (thinking + every call) before acting on it: one all-or-nothing batch.
            std::vector<events::NewEvent> batch;
            if (assistant.content.find_first_not_of(" \t\r\n") != std::string::npos)
                batch.push_back(stamp({.id = {},
                                       .type = "ThinkingGenerated",
                                       .aggregate_id = session,
                                       .data = {{"text", assistant.content}, {"run_id", run_id}, {"iteration", n}}},
                                      it + ":thinking"));
            for (std::size_t k = 0; k < assistant.tool_calls.size(); ++k) {
                auto& tc = assistant.tool_calls[k];
                if (tc.id.empty()) tc.id = "call_" + std::to_string(n) + "_" + std::to_string(k);
                json data = {{"tool", tc.name},
                             {"tool_call_id", tc.id},
                             {"arguments", tc.arguments.is_object() ? tc.arguments : json::object()},
                             {"iteration", n},
                             {"run_id", run_id}};
                if (!tc.raw_arguments.empty()) data["raw_arguments"] = tc.raw_arguments;
                if (k == 0) {
                    data["usage"] = usage_json(c->usage);
                    data["model"] = c->model.empty() ? model : c->model;
                    if (!c->finish_reason.empty()) data["finish_reason"] = c->finish_reason;
                }
                batch.push_back(stamp({.id = {}, .type = "ToolCalled", .aggregate_id = session, .data = data},
                                      it + ":call:" + std::to_string(k)));
            }
            if (auto s = store.append(batch); !s) return s.error();
        }
        messages.push_back(assistant);

        // Run the calls (or reuse their recorded results), answering every tool_call_id.
        bool complete_run = false;
        std::string summary;
        for (std::size_t k = 0; k < assistant.tool_calls.size(); ++k) {
            const auto& tc = assistant.tool_calls[k];
            const std::string ks = std::to_string(k);
            json result;
            bool is_error = false;
            if (const auto* done = find(it + ":result:" + ks)) {
                result = done->data.contains("result") ? done->data["result"] : json();
                is_error = done->data.value("is_error", false);
                if (tc.name == "task_complete" && !is_error) {
                    complete_run = true;
                    summary = str_field(tc.arguments, "summary");
                }
            } else {
                ToolContext tctx;
                tctx.user_id = user_id;
                tctx.session_id = session;
                tctx.channel = channel;
                tctx.run_id = run_id;
                tctx.iteration = n;
                tctx.tool_call_id = tc.id;
                tctx.reply_to = reply_to;
                tctx.nats = o_.nats.get();
                tctx.recall_timeout = o_.recall_timeout;
                const std::string effect_step = it + ":effect:" + ks;
                if (const auto* eff = find(effect_step)) tctx.recorded_effect = *eff;
                tctx.effect_id = step_id(effect_step).str();
                tctx.now = now_ms();
                tctx.store_get = [&](const std::string& path) { return store.get_json(path); };
                tctx.record_effect = [&](events::NewEvent e) -> Status {
                    auto stamped = stamp(std::move(e), effect_step);
                    bool is_message = stamped.type == "MessageGenerated";
                    auto id = stamped.id->str();
                    if (auto s = store.append({std::move(stamped)}); !s) return s;
                    if (is_message) messages_sent.insert(id);
                    return ok();
                };
                if (auto s = may_work("tool " + tc.name + " of iteration " + std::to_string(n)); !s) return s;
                auto t0 = std::chrono::steady_clock::now();
                ToolResult r;
                if (auto tool = find_tool(tc.name)) {
                    try {
                        r = tool->execute(tctx, tc.arguments);
                    } catch (const std::exception& ex) {
                        r = ToolResult::error(tc.name + " failed: " + ex.what());
                    }
                } else {
                    r = ToolResult::error("unknown tool '" + tc.name + "'");
                }
                if (r.fatal) return *r.fatal;  // the store is unavailable (retry the run later) or fenced
                result = r.result;
                is_error = r.is_error;
                if (r.completes_run) {
                    complete_run = true;
                    summary = r.summary;
                }
                auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
                json data = {{"tool", tc.name},
                             {"tool_call_id", tc.id},
                             {"result", result},
                             {"is_error", is_error},
                             {"duration_ms", std::max<std::int64_t>(took, 0)},
                             {"iteration", n},
                             {"run_id", run_id}};
                if (auto s = store.append({stamp({.id = {}, .type = "ToolCompleted", .aggregate_id = session, .data = data},
                                                 it + ":result:" + ks)});
                    !s)
                    return s.error();
            }
            messages.push_back({"tool", tool_content(result, is_error), {}, tc.id});
        }
        if (complete_run) {
            if (auto s = store.append({completed("task_complete", n, summary)}); !s) return s.error();
            log->info("run {}: completed (task_complete) after {} iteration(s)", run_id, n);
            return ok();
        }
    }
    if (auto s = store.append({completed("max_iterations", o_.max_iterations, "")}); !s) return s.error();
    log->info("run {}: stopped after max_iterations ({})", run_id, o_.max_iterations);
    return ok();
}

}  // namespace engram::ai
