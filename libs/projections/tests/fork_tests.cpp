#include <catch2/catch.hpp>
#include <map>

#include "engram/projections/projections.h"
#include "helpers.h"

using namespace engram;
using namespace engram::projections;
using engram::projections::test::ev;
using nlohmann::json;

namespace {

const std::string kOrigin = "session:web:origin";
const std::string kFork = "session:web:fork";

// The log of a few sessions, read the way the store's aggregate reads are.
struct Log {
    std::map<std::string, std::vector<events::Event>> sessions;
    int reads = 0;
    void add(events::Event e) { sessions[e.aggregate_id].push_back(std::move(e)); }
    SessionReader reader() {
        return [this](const std::string& s, std::int64_t up_to) -> Result<std::vector<events::Event>> {
            ++reads;
            std::vector<events::Event> out;
            for (const auto& e : sessions[s])
                if (e.position.value() <= up_to) out.push_back(e);
            return out;
        };
    }
};

events::Event user(const std::string& session, const std::string& text, std::int64_t pos, std::int64_t version) {
    return ev("MessageReceived", session,
              {{"channel", "web"}, {"text", text}, {"user_id", "web:u"}, {"session_id", session}, {"message_id", text}}, pos,
              version);
}
events::Event answer(const std::string& session, const std::string& text, std::int64_t pos, std::int64_t version) {
    return ev("MessageGenerated", session, {{"channel", "web"}, {"text", text}}, pos, version);
}
events::Event forked(const std::string& fork, const std::string& origin, std::int64_t at, std::int64_t pos,
                     json extra = json::object()) {
    json d = {{"origin_session_id", origin}, {"at_position", at}, {"forked_session_id", fork}, {"user_id", "web:u"}};
    d.update(extra);
    return ev("SessionForked", fork, d, pos, 1);
}

// A fork request (named fields, without designated initializers that leave members out).
ForkRequest fork_req(std::string origin, std::int64_t at, std::string prompt = "", std::string model = "",
                     std::string source = "", std::string key = "") {
    ForkRequest r;
    r.origin = std::move(origin);
    r.at = at;
    r.prompt = std::move(prompt);
    r.model = std::move(model);
    r.source = std::move(source);
    r.key = std::move(key);
    return r;
}

std::vector<std::string> texts(const json& view) {
    std::vector<std::string> out;
    for (const auto& m : view["messages"]) out.push_back(m["role"].get<std::string>() + ":" + m["text"].get<std::string>());
    return out;
}

// O: q1 (1) a1 (2) q2 (3) a2 (4); F forks O at 3 (position 10) and answers (11).
Log two_branches() {
    Log log;
    log.add(user(kOrigin, "q1", 1, 1));
    log.add(answer(kOrigin, "a1", 2, 2));
    log.add(user(kOrigin, "q2", 3, 3));
    log.add(answer(kOrigin, "a2", 4, 4));
    log.add(forked(kFork, kOrigin, 3, 10, {{"model", "other-model"}}));
    log.add(answer(kFork, "a2 again", 11, 2));
    return log;
}

}  // namespace

TEST_CASE("conversation: SessionForked records the origin and a prompt as the user's turn", "[unit][projections]") {
    auto plain = fold(conversation(), kFork, {forked(kFork, kOrigin, 3, 10)});
    CHECK(plain["forked_from"] == json({{"session_id", kOrigin}, {"position", 3}}));
    CHECK(plain["messages"].empty());
    CHECK(plain["position"] == 10);

    auto asked = fold(conversation(), kFork, {forked(kFork, kOrigin, 3, 10, {{"prompt", "and now?"}, {"model", "m2"}})});
    CHECK(asked["forked_from"]["model"] == "m2");
    REQUIRE(asked["messages"].size() == 1);
    CHECK(asked["messages"][0]["role"] == "user");
    CHECK(asked["messages"][0]["text"] == "and now?");
}

TEST_CASE("forks: a fork's history is its origin up to the fork position, then its own events", "[unit][projections]") {
    auto log = two_branches();
    auto history = session_history(kFork, kAllPositions, log.reader());
    REQUIRE(history.ok());
    REQUIRE(history->size() == 2);
    CHECK((*history)[0].session_id == kOrigin);
    CHECK((*history)[0].events.size() == 3);  // a2 (position 4) is after the fork
    auto view = conversation_view(*history);
    CHECK(texts(view) == std::vector<std::string>{"user:q1", "assistant:a1", "user:q2", "assistant:a2 again"});
    CHECK(view["session_id"] == kFork);
    CHECK(view["forked_from"]["session_id"] == kOrigin);
    CHECK(view["messages"][0]["session_id"] == kOrigin);  // inherited entries say where they were written
    CHECK_FALSE(view["messages"][3].contains("session_id"));

    // The origin is its own history, untouched by the fork.
    auto origin = session_history(kOrigin, kAllPositions, log.reader());
    REQUIRE(origin.ok());
    CHECK(origin->size() == 1);
    CHECK(texts(conversation_view(*origin)) == std::vector<std::string>{"user:q1", "assistant:a1", "user:q2", "assistant:a2"});

    // Cut before the re-asked message: what a run answering it again sees.
    auto cut = conversation_view(*history, 3);
    CHECK(texts(cut) == std::vector<std::string>{"user:q1", "assistant:a1"});
    REQUIRE(last_user_message(view) != nullptr);
    CHECK((*last_user_message(view))["text"] == "q2");
}

TEST_CASE("forks: forks of forks compose; a cycle or a too deep chain stops", "[unit][projections]") {
    auto log = two_branches();
    const std::string f2 = "session:web:fork2";
    log.add(forked(f2, kFork, 11, 20, {{"prompt", "shorter please"}}));
    log.add(answer(f2, "short", 21, 2));
    auto history = session_history(f2, kAllPositions, log.reader());
    REQUIRE(history.ok());
    CHECK(history->size() == 3);
    CHECK(texts(conversation_view(*history)) == std::vector<std::string>{"user:q1", "assistant:a1", "user:q2",
                                                                         "assistant:a2 again", "user:shorter please",
                                                                         "assistant:short"});

    Log loop;
    loop.add(forked("session:web:a", "session:web:b", 5, 1));
    loop.add(forked("session:web:b", "session:web:a", 5, 2));
    auto cyc = session_history("session:web:a", kAllPositions, loop.reader());
    REQUIRE_FALSE(cyc.ok());
    CHECK(cyc.error().code == "fork_too_deep");
    CHECK(loop.reads <= kMaxForkDepth + 2);
}

TEST_CASE("forks: fork_event checks the request and builds the SessionForked", "[unit][projections]") {
    auto log = two_branches();
    auto reader = log.reader();
    auto built = fork_event(fork_req(kOrigin, 3, "", "m2", "api", "k1"), reader);
    REQUIRE(built.ok());
    const json& e = *built;
    CHECK(e["type"] == "SessionForked");
    CHECK(e["aggregate_id"].get<std::string>().rfind("session:web:", 0) == 0);
    CHECK(e["data"]["origin_session_id"] == kOrigin);
    CHECK(e["data"]["at_position"] == 3);
    CHECK(e["data"]["model"] == "m2");
    CHECK(e["data"]["user_id"] == "web:u");
    CHECK(e["data"]["depth"] == 1);
    CHECK(e["data"]["forked_session_id"] == e["aggregate_id"]);
    CHECK_FALSE(e["data"].contains("prompt"));
    // The same key gives the same fork (a retried request stores it once); another key another one.
    auto again = fork_event(fork_req(kOrigin, 3, "", "m2", "api", "k1"), reader);
    CHECK((*again)["id"] == e["id"]);
    CHECK((*again)["aggregate_id"] == e["aggregate_id"]);
    auto other = fork_event(fork_req(kOrigin, 3, "", "", "api", "k2"), reader);
    CHECK((*other)["aggregate_id"] != e["aggregate_id"]);
    auto unkeyed = fork_event(fork_req(kOrigin, 3, "", "", "api"), reader);
    CHECK((*unkeyed)["aggregate_id"] != e["aggregate_id"]);
    // A position past the origin's last event is recorded as that event: later events stay out.
    auto ahead = fork_event(fork_req(kOrigin, 9, "x"), reader);
    REQUIRE(ahead.ok());
    CHECK((*ahead)["data"]["at_position"] == 4);
    // A fork of the fork is one deeper.
    auto deeper = fork_event(fork_req(kFork, 11, "x", "", "cli"), reader);
    REQUIRE(deeper.ok());
    CHECK((*deeper)["data"]["depth"] == 2);
    CHECK((*deeper)["metadata"]["source"] == "fork:cli");
}

TEST_CASE("forks: fork_event refuses bad requests with a clear reason", "[unit][projections]") {
    auto log = two_branches();
    log.add(answer("session:web:silent", "hello", 30, 1));  // a session with no user message
    auto reader = log.reader();
    auto refused = [&](ForkRequest r, const std::string& code, const std::string& says) {
        auto e = fork_event(r, reader);
        REQUIRE_FALSE(e.ok());
        CHECK(e.error().code == code);
        CHECK(e.error().detail.find(says) != std::string::npos);
    };
    refused(fork_req(kOrigin, 0), "invalid_parameter", "'at' must be a global position >= 1");
    refused(fork_req("user:x", 3), "invalid_parameter", "session aggregate id");
    refused(fork_req("session:web:nobody", 3), "not_found", "no session 'session:web:nobody'");
    refused(fork_req(kFork, 5), "invalid_parameter", "before the first event of session:web:fork (position 10)");
    refused(fork_req("session:web:silent", 30), "invalid_parameter", "no user message at or before position 30");
    refused(fork_req(kOrigin, 3, "  "), "invalid_parameter", "'prompt' must not be blank");
    refused(fork_req(kOrigin, 3, "", std::string(129, 'm')), "invalid_parameter", "'model' is longer than 128");
    refused(fork_req(kOrigin, 3, std::string(8001, 'p')), "invalid_parameter", "'prompt' is longer");

    // A chain of kMaxForkDepth forks: one more is refused.
    std::string origin = kOrigin;
    std::int64_t pos = 100;
    for (int i = 1; i <= kMaxForkDepth; ++i) {
        std::string f = "session:web:deep" + std::to_string(i);
        log.add(forked(f, origin, pos - 1, pos, {{"prompt", "again"}}));
        origin = f;
        pos += 10;
    }
    auto at_limit = fork_event(fork_req("session:web:deep7", pos, "x"), reader);
    CHECK(at_limit.ok());
    refused(fork_req(origin, pos, "x"), "invalid_parameter", "at most 8 deep");
}

TEST_CASE("forks: the store reader pages by version and stops at the position", "[unit][projections]") {
    std::vector<json> asked;
    auto reader = store_session_reader([&](const std::string& s, std::int64_t from, int limit) -> Result<json> {
        asked.push_back({{"session", s}, {"from", from}, {"limit", limit}});
        json page = json::array();
        for (std::int64_t v = from; v < from + limit && v <= 2500; ++v)
            page.push_back(ev("MessageGenerated", s, {{"text", "t"}}, v * 2, v).to_json());
        return json{{"events", page}};
    });
    auto all = reader("session:web:long", kAllPositions);
    REQUIRE(all.ok());
    CHECK(all->size() == 2500);
    CHECK(asked.size() == 3);
    CHECK(asked[1]["from"] == 1001);
    asked.clear();
    auto some = reader("session:web:long", 1001);  // versions 1..500 (positions 2..1000)
    REQUIRE(some.ok());
    CHECK(some->size() == 500);
    CHECK(asked.size() == 1);
}
