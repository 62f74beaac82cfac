// The fencing decisions of a run, without a store: what a version conflict means, and how far the
// run's known version of its session moves after an append.
#include "agent.h"
#include "mcp.h"

#include "engram/core/uuid.h"

#include <catch2/catch.hpp>

#include <mutex>
#include <thread>

using namespace engram;

namespace {

events::Event ev(std::int64_t version, const std::string& causation, Uuid id = Uuid::v4()) {
    events::Event e;
    e.id = id;
    e.type = "Custom";
    e.aggregate_id = "session:web:x";
    e.version = AggregateVersion(version);
    e.position = GlobalPosition(version);
    if (!causation.empty()) e.metadata = {{"causation_id", causation}};
    return e;
}

}  // namespace

TEST_CASE("a version conflict caused by other traffic moves the known version", "[unit][ai][fencing]") {
    const std::string tid = Uuid::v4().str();
    auto v = ai::judge_conflict({ev(6, ""), ev(7, Uuid::v4().str()), ev(8, "")}, tid, {}, 5);
    CHECK_FALSE(v.fenced);
    CHECK(v.version == 8);
    // Nothing new (the read raced): the version stays.
    CHECK(ai::judge_conflict({}, tid, {}, 5).version == 5);
}

TEST_CASE("an event of the same trigger the run did not write means another instance runs it", "[unit][ai][fencing]") {
    const auto t = Uuid::v4();
    const std::string tid = t.str();
    auto foreign = Uuid::v5(t, "iter:1:final");
    auto v = ai::judge_conflict({ev(6, ""), ev(7, tid, foreign)}, tid, {}, 5);
    CHECK(v.fenced);
    CHECK(v.detail.find(foreign.str()) != std::string::npos);
    CHECK(v.detail.find("version 7") != std::string::npos);

    // The run's own events (appended, or replayed as identical) are not a rival's.
    auto mine = Uuid::v5(t, "started");
    auto w = ai::judge_conflict({ev(6, tid, mine), ev(7, "")}, tid, {mine.str()}, 5);
    CHECK_FALSE(w.fenced);
    CHECK(w.version == 7);
    // Nor is the trigger itself, whatever its metadata says.
    CHECK_FALSE(ai::judge_conflict({ev(6, tid, t)}, tid, {}, 5).fenced);
}

TEST_CASE("the known version follows the run's own appends, never past events it has not seen", "[unit][ai][fencing]") {
    CHECK(ai::advance_version(5, {6, 7, 8}) == 8);  // created on top of what the run knew
    CHECK(ai::advance_version(5, {3}) == 5);        // a replay of an event the run had read
    CHECK(ai::advance_version(5, {5, 6}) == 6);
    CHECK(ai::advance_version(5, {9, 10}) == 5);  // replayed further on: 6..8 unseen
    CHECK(ai::advance_version(5, {}) == 5);
}

TEST_CASE("MCP_SERVERS is parsed strictly, one line naming the server and the field", "[unit][ai][mcp]") {
    auto ok = ai::parse_mcp_servers(R"({"fs": {"command": "node", "args": ["a.js", "/tmp"], "env": {"K": "v"}}})");
    REQUIRE(ok);
    REQUIRE(ok->size() == 1);
    CHECK((*ok)[0].command == std::vector<std::string>{"node", "a.js", "/tmp"});
    CHECK((*ok)[0].env.at("K") == "v");
    auto http = ai::parse_mcp_servers(R"({"web": {"url": "https://mcp.example/mcp", "headers": {"Authorization": "Bearer t"}}})");
    REQUIRE(http);
    CHECK((*http)[0].url == "https://mcp.example/mcp");
    CHECK((*http)[0].headers.at("Authorization") == "Bearer t");
    CHECK((*http)[0].command.empty());
    CHECK(ai::parse_mcp_servers("")->empty());
    CHECK(ai::parse_mcp_servers("{}")->empty());
    for (auto [text, part] : std::vector<std::pair<std::string, std::string>>{
             {"[1]", "JSON object"},
             {"{nope", "MCP_SERVERS"},
             {R"({"a b": {"command": "x"}})", "server name"},
             {R"({"s": {"args": []}})", "MCP_SERVERS.s: \"command\""},
             {R"({"s": {"command": "x", "args": [1]}})", "\"args\""},
             {R"({"s": {"command": "x", "env": {"K": 1}}})", "\"env\""},
             {R"({"s": {"command": "x", "cwd": "/"}})", "unknown field \"cwd\""},
             {R"({"s": {"url": "ftp://h/mcp"}})", "http:// or https://"},
             {R"({"s": {"url": "http://h/mcp", "command": "x"}})", "unknown field \"command\""},
             {R"({"s": {"url": "http://h/mcp", "headers": {"X": "a\nb"}}})", "no line breaks"}}) {
        INFO(text);
        auto r = ai::parse_mcp_servers(text);
        REQUIRE_FALSE(r);
        CHECK(r.error().detail.find(part) != std::string::npos);
        CHECK(r.error().detail.find('\n') == std::string::npos);
    }
    CHECK(ai::mcp_tool_name("fs", "read_file") == "fs__read_file");
    CHECK(ai::mcp_tool_name("x", "a.b/c d") == "x__a_b_c_d");
    CHECK(ai::mcp_tool_name("x", std::string(100, 't')).size() == 64);
}

namespace {

struct Published {
    std::mutex mu;
    std::vector<std::pair<std::chrono::steady_clock::time_point, nlohmann::json>> msgs;
    std::string subject;
    ai::PublishFn fn() {
        return [this](const std::string& s, const std::string& data) {
            std::lock_guard lk(mu);
            subject = s;
            msgs.push_back({std::chrono::steady_clock::now(), nlohmann::json::parse(data)});
        };
    }
};

}  // namespace

TEST_CASE("deltas: a fast model's pieces are coalesced, bounded per message, and end with the call", "[unit][ai]") {
    Published pub;
    llm::Request req;
    auto t0 = std::chrono::steady_clock::now();
    {
        auto live = ai::open_deltas(pub.fn(), {}, "session:web:a.b*c", "run-1", 2, req);
        REQUIRE(req.on_delta);
        for (int i = 0; i < 2000; ++i) req.on_delta({llm::Delta::Kind::content, "wörd ", 0, {}, {}});
        req.on_delta({llm::Delta::Kind::tool_call, "", 0, "call_1", "send_message"});
        req.on_delta({llm::Delta::Kind::tool_call, "{\"text\":", 0, {}, {}});
        req.on_delta({llm::Delta::Kind::tool_call, "\"hi\"}", 0, {}, {}});
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
    }
    auto elapsed = std::chrono::steady_clock::now() - t0;
    CHECK(pub.subject == "engram.deltas.session_web_a_b_c");
    REQUIRE(pub.msgs.size() >= 3);
    // At most one message per 50 ms (and one for the end).
    CHECK(pub.msgs.size() <= static_cast<std::size_t>(elapsed / std::chrono::milliseconds(50)) + 2);
    std::string content, args;
    std::int64_t seq = 0;
    for (auto& [at, m] : pub.msgs) {
        CHECK(m["session_id"] == "session:web:a.b*c");
        CHECK(m["run_id"] == "run-1");
        CHECK(m["iteration"] == 2);
        CHECK(m["seq"].get<std::int64_t>() == ++seq);
        std::size_t bytes = 0;
        if (m.contains("content")) {
            content += m["content"].get<std::string>();
            bytes += m["content"].get<std::string>().size();
        }
        if (m.contains("tool_calls"))
            for (auto& t : m["tool_calls"]) {
                if (t.contains("arguments")) {
                    args += t["arguments"].get<std::string>();
                    bytes += t["arguments"].get<std::string>().size();
                }
                if (t.contains("name")) CHECK(t["name"] == "send_message");
            }
        CHECK(bytes <= 4096);
    }
    std::string expected;
    for (int i = 0; i < 2000; ++i) expected += "wörd ";
    CHECK(content == expected);  // 12 KB at 4 KiB per 50 ms: all of it within the 400 ms
    CHECK(args == "{\"text\":\"hi\"}");
    CHECK(pub.msgs.back().second.value("end", false));
}

TEST_CASE("deltas: a restart is passed on; past the preview cap only the end follows; no publisher, no sink", "[unit][ai]") {
    Published pub;
    llm::Request req;
    {
        ai::DeltaOptions o;
        o.max_preview = 100;
        auto live = ai::open_deltas(pub.fn(), o, "s", "r", 1, req);
        req.on_delta({llm::Delta::Kind::content, "first try", 0, {}, {}});
        std::this_thread::sleep_for(std::chrono::milliseconds(120));
        req.on_delta({llm::Delta::Kind::restart, "", 0, {}, {}});
        req.on_delta({llm::Delta::Kind::content, "ok", 0, {}, {}});
        req.on_delta({llm::Delta::Kind::content, std::string(150, 'x'), 0, {}, {}});
        std::this_thread::sleep_for(std::chrono::milliseconds(120));
        req.on_delta({llm::Delta::Kind::content, "never shown", 0, {}, {}});
        live->end();
        req.on_delta({llm::Delta::Kind::content, "after the end", 0, {}, {}});
    }
    REQUIRE(pub.msgs.size() >= 3);
    CHECK(pub.msgs[0].second["content"] == "first try");
    bool restart = false, truncated = false;
    std::string after;
    for (auto& [at, m] : pub.msgs) {
        restart = restart || m.value("restart", false);
        truncated = truncated || m.value("truncated", false);
        if (restart && m.contains("content")) after += m["content"].get<std::string>();
    }
    CHECK(restart);
    CHECK(truncated);
    CHECK(after == "ok");
    CHECK(pub.msgs.back().second.value("end", false));

    llm::Request none;
    CHECK(ai::open_deltas(nullptr, {}, "s", "r", 1, none) == nullptr);
    CHECK_FALSE(none.on_delta);
}
