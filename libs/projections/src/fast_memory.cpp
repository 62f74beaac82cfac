// The `fast_memory` projection (see README.md for the state shape and the rules).
#include "engram/projections/fast_memory.h"

#include <algorithm>
#include <cmath>

#include "engram/core/time.h"
#include "engram/events/types.h"
#include "util.h"

namespace engram::projections {
namespace {

namespace T = events::types;
using detail::has_string;
using detail::str;
using nlohmann::json;

constexpr std::string_view kPrefix = "user:";
constexpr double kDefaultImportance = 0.5;

double importance_of(const json& d) {
    auto it = d.find("importance");
    if (it == d.end() || !it->is_number()) return kDefaultImportance;
    double v = it->get<double>();
    if (!std::isfinite(v)) return kDefaultImportance;
    return std::clamp(v, 0.0, 1.0);
}

bool has_tag(const json& d, std::string_view tag) {
    auto it = d.find("tags");
    if (it == d.end() || !it->is_array()) return false;
    return std::any_of(it->begin(), it->end(), [&](const json& t) { return t.is_string() && t.get<std::string>() == tag; });
}

std::size_t profile_tokens(const json& profile) {
    std::size_t n = 0;
    for (auto it = profile.begin(); it != profile.end(); ++it)
        if (it->is_string()) n += estimate_tokens(it.key() + ": " + it->get<std::string>());
    return n;
}

std::size_t memory_tokens(const json& m) { return estimate_tokens(str(m, "text")); }

// Expired at `now` (an unparsable expires_at never expires).
bool expired(const json& m, SysTime now) {
    if (!has_string(m, "expires_at")) return false;
    auto t = parse_rfc3339(m["expires_at"].get<std::string>());
    return t && *t <= now;
}

// Ranks (importance desc, then most recent first, then id) and keeps what fits in the budget left by
// the profile: a memory too large for what remains is skipped, smaller less important ones may fit.
void rank_and_trim(json& state) {
    json& memories = state["memories"];
    std::vector<json> all(memories.begin(), memories.end());
    std::stable_sort(all.begin(), all.end(), [](const json& a, const json& b) {
        double ia = a.value("importance", kDefaultImportance), ib = b.value("importance", kDefaultImportance);
        if (ia != ib) return ia > ib;
        std::int64_t pa = a.value("position", std::int64_t{0}), pb = b.value("position", std::int64_t{0});
        if (pa != pb) return pa > pb;
        return str(a, "memory_id") < str(b, "memory_id");
    });
    std::size_t used = profile_tokens(state["profile"]);
    json kept = json::array();
    for (auto& m : all) {
        std::size_t t = memory_tokens(m);
        if (used + t > kFastMemoryTokenBudget) continue;
        used += t;
        kept.push_back(std::move(m));
    }
    memories = std::move(kept);
    state["tokens"] = used;
}

void on_memory_stored(json& state, const events::Event& e) {
    const json& d = e.data;
    std::string text = str(d, "text");
    json& memories = state["memories"];
    if (!memories.is_array()) memories = json::array();
    if (!state["profile"].is_object()) state["profile"] = json::object();

    // Expiry is judged against the event's commit time, never the wall clock (purity).
    memories.erase(std::remove_if(memories.begin(), memories.end(), [&](const json& m) { return expired(m, e.timestamp); }),
                   memories.end());
    if (has_string(d, "supersedes")) {
        std::string old = d["supersedes"].get<std::string>();
        memories.erase(
            std::remove_if(memories.begin(), memories.end(), [&](const json& m) { return str(m, "memory_id") == old; }),
            memories.end());
    }

    bool profile = (str(d, "kind") == "profile" || has_tag(d, "profile")) && has_string(d, "key");
    if (profile) {
        // A later profile memory with the same key replaces the value; one that would push the
        // profile alone over the budget is refused (the previous value stays).
        std::string key = d["key"].get<std::string>();
        std::string value = str(d, "value", text);
        json candidate = state["profile"];
        candidate[key] = value;
        if (!value.empty() && profile_tokens(candidate) <= kFastMemoryTokenBudget) state["profile"] = std::move(candidate);
    } else if (!text.empty()) {
        json m{{"memory_id", e.id.str()}, {"text", text}, {"importance", importance_of(d)}, {"position", e.position.value()}};
        if (d.contains("tags") && d["tags"].is_array() && !d["tags"].empty()) m["tags"] = d["tags"];
        if (has_string(d, "expires_at")) m["expires_at"] = d["expires_at"];
        if (!expired(m, e.timestamp)) {
            auto same = std::find_if(memories.begin(), memories.end(), [&](const json& x) { return str(x, "text") == text; });
            if (same != memories.end()) {
                // Stored again: refresh the existing memory (keeps its id) instead of duplicating it.
                (*same)["position"] = e.position.value();
                if (d.contains("importance")) (*same)["importance"] = m["importance"];
                if (m.contains("tags")) (*same)["tags"] = m["tags"];
                if (m.contains("expires_at"))
                    (*same)["expires_at"] = m["expires_at"];
                else
                    same->erase("expires_at");
            } else {
                memories.push_back(std::move(m));
            }
        }
    }
    rank_and_trim(state);
}

class FastMemory final : public Projection {
public:
    std::string_view name() const override { return "fast_memory"; }

    Result<std::string> aggregate_of(std::string_view id) const override {
        if (id.size() <= kPrefix.size() || id.substr(0, kPrefix.size()) != kPrefix || !events::valid_aggregate_id(id))
            return Error::make("invalid_parameter",
                               "fast_memory id must be a user aggregate id 'user:<user_id>', got '" + std::string(id) + "'");
        return std::string(id);
    }

    std::vector<std::string_view> event_types() const override { return {T::MemoryStored}; }

    json initial(std::string_view id) const override {
        std::string user = id.substr(0, kPrefix.size()) == kPrefix ? std::string(id.substr(kPrefix.size())) : std::string(id);
        return json{{"user_id", user}, {"position", 0}, {"profile", json::object()}, {"memories", json::array()}, {"tokens", 0}};
    }

    json apply(json state, const events::Event& e) const override {
        if (!state.is_object()) return state;
        // FastMemoryUpdated (this projection's own output) and any other type: unchanged.
        if (e.type != T::MemoryStored || !e.data.is_object()) return state;
        if (!detail::should_apply(state, e, std::string(kPrefix) + str(state, "user_id"))) return state;
        on_memory_stored(state, e);
        state["position"] = e.position.value();
        return state;
    }
};

}  // namespace

const Projection& fast_memory() {
    static const FastMemory instance;
    return instance;
}

std::size_t estimate_tokens(std::string_view text) {
    std::size_t cps = 0;
    for (unsigned char c : text)
        if ((c & 0xC0) != 0x80) ++cps;  // count UTF-8 lead bytes: code points
    return (cps + 3) / 4;
}

std::string fast_memory_summary(const nlohmann::json& state) {
    std::string out;
    if (!state.is_object()) return out;
    auto p = state.find("profile");
    if (p != state.end() && p->is_object() && !p->empty()) {
        out += "Profile:\n";
        for (auto it = p->begin(); it != p->end(); ++it)  // nlohmann objects iterate in key order
            if (it->is_string()) out += "- " + it.key() + ": " + it->get<std::string>() + "\n";
    }
    auto m = state.find("memories");
    if (m != state.end() && m->is_array() && !m->empty()) {
        out += "Memories:\n";
        for (const auto& x : *m) out += "- " + str(x, "text") + "\n";
    }
    return out;
}

namespace {
json content_of(json s) {
    if (!s.is_object()) return s;
    s.erase("position");
    auto m = s.find("memories");
    if (m != s.end() && m->is_array())
        for (auto& x : *m)
            if (x.is_object()) x.erase("position");
    return s;
}
}  // namespace

bool fast_memory_changed(const nlohmann::json& before, const nlohmann::json& after) {
    return content_of(before) != content_of(after);
}

}  // namespace engram::projections
