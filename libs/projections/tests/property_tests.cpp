// Properties over random event sequences (seeded, reproducible): determinism, and incremental folding
// (prefix, persisted as JSON text, then the rest) == folding from scratch. Payloads are valid per proto/.
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <set>

#include "engram/events/catalog.h"
#include "engram/projections/projections.h"
#include "helpers.h"

using namespace engram;
using namespace engram::projections;
using nlohmann::json;
using test::ev;

namespace {

constexpr int kSequences = 200;

class Gen {
public:
    explicit Gen(std::uint32_t seed) : rng_(seed) {}
    int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
    bool chance(int percent) { return pick(100) < percent; }
    template <class C>
    const auto& one_of(const C& c) {
        return c[static_cast<std::size_t>(pick(static_cast<int>(c.size())))];
    }
    std::string uuid(int n) { return Uuid::v5(test::test_ns(), "u" + std::to_string(n)).str(); }

private:
    std::mt19937 rng_;
};

const std::string S = "session:web:prop";
const std::string S_OTHER = "session:web:other";
const std::string U = "user:web:prop";
const std::string U_OTHER = "user:web:other";

std::vector<events::Event> conversation_sequence(Gen& g) {
    std::vector<events::Event> out;
    std::vector<std::string> message_events;  // ids of messages, for deliveries
    const std::vector<std::string> channels = {"telegram", "web", "webhook", "api"};
    const std::vector<std::string> out_channels = {"telegram", "web", "webhook", "api", "email", "slack"};
    int n = g.pick(800);
    for (int pos = 1; pos <= n; ++pos) {
        std::string agg = g.chance(10) ? S_OTHER : S;
        std::string run_id = g.uuid(g.pick(4));
        std::string call = "call_" + std::to_string(g.pick(12));
        std::string type;
        json d;
        switch (g.pick(15)) {
            case 0:
                type = "TriggerReceived";
                d = {{"source", "cli"}, {"user_id", "web:prop"}, {"session_id", agg}, {"message", "do " + std::to_string(pos)}};
                if (g.chance(50)) d["channel"] = g.one_of(out_channels);
                break;
            case 1:
            case 2:
                type = "MessageReceived";
                d = {{"channel", g.one_of(channels)},
                     {"text", "msg " + std::to_string(pos)},
                     {"user_id", "web:prop"},
                     {"session_id", agg}};
                if (g.chance(70)) d["message_id"] = g.chance(50) ? json(g.pick(20)) : json("m" + std::to_string(g.pick(20)));
                if (g.chance(25)) d["edited"] = g.chance(80);
                break;
            case 3:
            case 4:
                type = "MessageGenerated";
                d = {{"text", "answer " + std::to_string(pos)}, {"channel", g.one_of(out_channels)}};
                if (g.chance(60)) d["run_id"] = run_id;
                break;
            case 5:
                type = "AIProcessingStarted";
                d = {{"trigger_event_id", g.uuid(100 + pos)}, {"model", "m"}, {"provider", "p"}};
                if (g.chance(80)) d["run_id"] = run_id;
                break;
            case 6:
                type = "AIProcessingCompleted";
                d = {{"stop_reason", g.one_of(std::vector<std::string>{"task_complete", "end_turn", "max_iterations"})},
                     {"iterations", g.pick(16)}};
                if (g.chance(70)) d["run_id"] = run_id;
                break;
            case 7:
                type = "AIProcessingFailed";
                d = {{"reason", "llm_timeout"}, {"detail", "The model timed out."}};
                if (g.chance(70)) d["run_id"] = run_id;
                break;
            case 8:
                type = "ToolCalled";
                d = {{"tool", "recall"}, {"tool_call_id", call}, {"arguments", {{"q", pos}}}, {"iteration", 1 + g.pick(15)}};
                if (g.chance(60)) d["run_id"] = run_id;
                break;
            case 9:
                type = "ToolCompleted";
                d = {{"tool", "recall"}, {"tool_call_id", call}, {"result", g.chance(50) ? json("ok") : json{{"n", pos}}}};
                if (g.chance(30)) d["is_error"] = g.chance(50);
                if (g.chance(60)) d["run_id"] = run_id;
                break;
            case 10:
                type = "ThinkingGenerated";
                d = {{"text", "hmm " + std::to_string(pos)}};
                break;
            case 11:
            case 12:
            case 13: {
                std::string src = message_events.empty() || g.chance(10) ? g.uuid(9999) : g.one_of(message_events);
                int k = g.pick(4);
                if (k == 0) {
                    type = "TelegramMessageSent";
                    d = {{"chat_id", 1}, {"message_ids", {pos}}, {"source_event_id", src}, {"parts", 1}};
                } else if (k == 1) {
                    type = "EmailSent";
                    d = {{"to", {"a@example.com"}}, {"subject", "s"}, {"source_event_id", src}};
                } else if (k == 2) {
                    type = "SlackMessageSent";
                    d = {{"source_event_id", src}, {"parts", 1}};
                } else {
                    type = "NotificationFailed";
                    d = {{"source_event_id", src}, {"channel", g.one_of(out_channels)}, {"reason", "http_500"}, {"attempts", 3}};
                }
                break;
            }
            default:
                type = g.chance(50) ? "WebhookReceived" : "ArtifactCreated";  // not folded
                d = type == "WebhookReceived"
                        ? json{{"source", "github"}, {"delivery_id", "d" + std::to_string(pos)}, {"payload", json::object()}}
                        : json{{"kind", "file"}, {"name", "a.txt"}, {"content", "x"}};
        }
        auto e = ev(type, agg, d, pos);
        if (type == "TriggerReceived" || type == "MessageReceived" || type == "MessageGenerated")
            message_events.push_back(e.id.str());
        out.push_back(std::move(e));
    }
    return out;
}

std::vector<events::Event> fast_memory_sequence(Gen& g) {
    std::vector<events::Event> out;
    std::vector<std::string> memory_ids;
    const std::vector<std::string> kinds = {"fact", "preference", "profile", "instruction", "event", "note"};
    const std::vector<std::string> keys = {"name", "timezone", "language", "city"};
    int n = g.pick(300);
    for (int pos = 1; pos <= n; ++pos) {
        std::string agg = g.chance(10) ? U_OTHER : U;
        std::string user = agg.substr(5);
        if (g.chance(8)) {
            out.push_back(ev("FastMemoryUpdated", agg,
                             {{"user_id", user}, {"summary", ""}, {"memories", json::array()}, {"tokens", 0}, {"position", pos}},
                             pos));
            continue;
        }
        int t = g.pick(40);  // 40 distinct texts, some long, so refreshes and trimming happen
        std::string text = "fact " + std::to_string(t) + " " + std::string(static_cast<std::size_t>((t * 53) % 400), 'z');
        json d{{"user_id", user}, {"text", text}};
        if (g.chance(70)) d["importance"] = g.pick(101) / 100.0;
        if (g.chance(40)) d["kind"] = g.one_of(kinds);
        if (g.chance(30)) d["key"] = g.one_of(keys);
        if (g.chance(30)) d["tags"] = g.chance(50) ? json{"profile"} : json{"a", "b"};
        if (g.chance(15)) d["supersedes"] = memory_ids.empty() || g.chance(20) ? g.uuid(7777) : g.one_of(memory_ids);
        if (g.chance(15)) d["expires_at"] = format_rfc3339(test::time_at(pos - 5 + g.pick(60)));
        auto e = ev("MemoryStored", agg, d, pos);
        memory_ids.push_back(e.id.str());
        out.push_back(std::move(e));
    }
    return out;
}

void check_payloads(const std::vector<events::Event>& evs) {
    const auto& cat = events::Catalog::builtin();
    for (const auto& e : evs) {
        auto st = cat.validate(e.type, e.data);
        INFO(e.type << " " << e.data.dump() << " " << (st ? std::string() : st.error().detail));
        REQUIRE(cat.known(e.type));
        REQUIRE(st.ok());
    }
}

void check_incremental(const Projection& p, const std::string& id, const std::vector<events::Event>& evs, Gen& g) {
    json full = fold(p, id, evs);
    REQUIRE(fold(p, id, evs) == full);  // deterministic
    std::size_t cut = evs.empty() ? 0 : static_cast<std::size_t>(g.pick(static_cast<int>(evs.size()) + 1));
    std::vector<events::Event> prefix(evs.begin(), evs.begin() + static_cast<std::ptrdiff_t>(cut));
    std::vector<events::Event> rest(evs.begin() + static_cast<std::ptrdiff_t>(cut), evs.end());
    json persisted = json::parse(fold(p, id, prefix).dump());  // as the memory processor stores it
    json continued = fold_from(p, persisted, rest);
    INFO(p.name() << " cut " << cut << " of " << evs.size());
    REQUIRE(continued == full);
    REQUIRE(continued.dump() == full.dump());

    // the state says which position it reflects: the last folded event of the aggregate
    std::int64_t last = 0;
    auto types = p.event_types();
    for (const auto& e : evs)
        if (e.aggregate_id == id && std::find(types.begin(), types.end(), e.type) != types.end()) last = e.position.value();
    REQUIRE(full["position"] == last);
}

}  // namespace

TEST_CASE("property: conversation incremental fold == fold from scratch (200 random sequences)", "[unit][projections]") {
    std::size_t max_messages = 0;
    for (int i = 0; i < kSequences; ++i) {
        Gen g(20261122u + static_cast<std::uint32_t>(i));
        auto evs = conversation_sequence(g);
        check_payloads(evs);
        check_incremental(conversation(), S, evs, g);
        json s = fold(conversation(), S, evs);
        REQUIRE(s["messages"].size() <= kMaxMessages);
        REQUIRE(s["tool_calls"].size() <= kMaxToolCalls);
        REQUIRE(s["thinking"].size() <= kMaxThinking);
        max_messages = std::max(max_messages, s["messages"].size());
    }
    REQUIRE(max_messages == kMaxMessages);  // the sequences do reach the bound
}

TEST_CASE("property: fast_memory incremental fold == fold from scratch (200 random sequences)", "[unit][projections]") {
    bool trimmed = false;
    for (int i = 0; i < kSequences; ++i) {
        Gen g(7700u + static_cast<std::uint32_t>(i));
        auto evs = fast_memory_sequence(g);
        check_payloads(evs);
        check_incremental(fast_memory(), U, evs, g);
        json s = fold(fast_memory(), U, evs);
        std::size_t sum = 0;
        for (auto it = s["profile"].begin(); it != s["profile"].end(); ++it)
            sum += estimate_tokens(it.key() + ": " + it->get<std::string>());
        for (const auto& m : s["memories"]) sum += estimate_tokens(m["text"].get<std::string>());
        REQUIRE(s["tokens"] == sum);
        REQUIRE(sum <= kFastMemoryTokenBudget);
        if (sum > kFastMemoryTokenBudget - 100) trimmed = true;
        // ranked: importance desc, then most recent
        for (std::size_t k = 1; k < s["memories"].size(); ++k) {
            const json& a = s["memories"][k - 1];
            const json& b = s["memories"][k];
            REQUIRE((a["importance"] > b["importance"] || (a["importance"] == b["importance"] && a["position"] > b["position"])));
        }
        // no duplicate texts
        std::set<std::string> seen;
        for (const auto& m : s["memories"]) REQUIRE(seen.insert(m["text"].get<std::string>()).second);
    }
    REQUIRE(trimmed);  // the sequences do reach the budget
}
