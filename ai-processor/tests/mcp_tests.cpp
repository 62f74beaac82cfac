// The AI processor's MCP client against real MCP servers nobody here wrote, installed from npm by
// the test command (tests/mcp): @modelcontextprotocol/server-everything and server-filesystem, over
// stdio. Then the whole path: the fake model calls an MCP tool through the processor binary.
#include "fake_openai.h"
#include "mcp.h"

#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

#include <signal.h>

#include <filesystem>
#include <fstream>

using namespace engram;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

std::string server_js(const std::string& package) {
    auto p = testing::source_dir() + "/tests/mcp/node_modules/@modelcontextprotocol/" + package + "/dist/index.js";
    if (!std::filesystem::exists(p)) FAIL(p << " is missing: the test command installs it (npm ci --prefix tests/mcp)");
    return p;
}

ai::McpServerConfig everything() { return {"everything", {"node", server_js("server-everything"), "stdio"}, {}, {}, {}}; }

std::optional<ai::Tool> tool_named(const std::vector<ai::Tool>& tools, const std::string& name) {
    for (auto& t : tools)
        if (t.name == name) return t;
    return std::nullopt;
}

ai::ToolResult call(const ai::Tool& t, const json& args) {
    ai::ToolContext ctx;
    return t.execute(ctx, args);
}

}  // namespace

TEST_CASE("MCP: server-everything's tools are offered with their schemas and called over stdio", "[integration][ai][mcp]") {
    ai::McpToolbox box({everything()}, 5000ms);
    auto problems = box.start();
    INFO((problems.empty() ? "" : problems[0]));
    REQUIRE(problems.empty());
    auto tools = box.tools();
    auto echo = tool_named(tools, "everything__echo");
    REQUIRE(echo);
    CHECK(echo->description.find("[MCP everything]") == 0);
    CHECK(echo->parameters["type"] == "object");
    CHECK(echo->parameters["properties"].contains("message"));
    CHECK_FALSE(echo->parameters.contains("$schema"));

    auto r = call(*echo, {{"message", "hi from engram"}});
    CHECK_FALSE(r.is_error);
    CHECK(r.result == "Echo: hi from engram");

    auto sum = tool_named(tools, "everything__get-sum");
    REQUIRE(sum);
    auto s = call(*sum, {{"a", 2}, {"b", 40}});
    CHECK_FALSE(s.is_error);
    CHECK(s.result.dump().find("42") != std::string::npos);

    // An image is described, not copied into the log.
    auto img = tool_named(tools, "everything__get-tiny-image");
    REQUIRE(img);
    auto i = call(*img, json::object());
    INFO(i.result.dump());
    REQUIRE(i.result.is_object());
    CHECK(i.result["content"][0]["type"] == "image");
    CHECK(i.result.dump().size() < 2000);

    // Bad arguments and a tool the server does not have are tool errors the model sees.
    auto bad = call(*sum, {{"a", "two"}});
    CHECK(bad.is_error);
}

TEST_CASE("MCP: a call past its timeout, a server killed and one that cannot start are tool errors; it comes back",
          "[integration][ai][mcp]") {
    ai::McpToolbox box({everything(), {"broken", {"/nonexistent/mcp-server"}, {}, {}, {}}}, 1500ms);
    auto problems = box.start();
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].find("broken") != std::string::npos);
    auto tools = box.tools();  // the broken server's tools are simply absent
    for (auto& t : tools) CHECK(t.name.rfind("broken__", 0) != 0);
    auto slow = tool_named(tools, "everything__trigger-long-running-operation");
    REQUIRE(slow);
    auto t0 = std::chrono::steady_clock::now();
    auto r = call(*slow, {{"duration", 10}, {"steps", 2}});
    CHECK(r.is_error);
    CHECK(r.result.get<std::string>().find("did not answer") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - t0 < 6s);

    auto echo = tool_named(tools, "everything__echo");
    REQUIRE(echo);
    CHECK(call(*echo, {{"message", "still there"}}).result == "Echo: still there");
    // kill -9 the server (our only child process running node): the next call starts it again.
    int killed = 0;
    for (int pid : testing::child_pids(::getpid())) {
        std::ifstream cmd("/proc/" + std::to_string(pid) + "/cmdline");
        std::string argv0;
        std::getline(cmd, argv0, '\0');
        if (argv0.find("node") != std::string::npos && ::kill(pid, SIGKILL) == 0) ++killed;
    }
    REQUIRE(killed == 1);
    std::this_thread::sleep_for(300ms);
    auto again = call(*echo, {{"message", "back"}});
    INFO(again.result.dump());
    CHECK_FALSE(again.is_error);
    CHECK(again.result == "Echo: back");
}

TEST_CASE("MCP: server-filesystem reads a file of its folder and refuses one outside it", "[integration][ai][mcp]") {
    auto dir = testing::make_temp_dir("mcp-fs");
    { std::ofstream(dir + "/notes.txt") << "the cat is called Tom\n"; }
    ai::McpToolbox box({{"fs", {"node", server_js("server-filesystem"), dir}, {}, {}, {}}}, 10000ms);
    REQUIRE(box.start().empty());
    auto tools = box.tools();
    auto read = tool_named(tools, "fs__read_text_file");
    if (!read) read = tool_named(tools, "fs__read_file");
    REQUIRE(read);
    auto r = call(*read, {{"path", dir + "/notes.txt"}});
    INFO(r.result.dump());
    CHECK_FALSE(r.is_error);
    CHECK(r.result.dump().find("the cat is called Tom") != std::string::npos);
    auto outside = call(*read, {{"path", "/etc/passwd"}});
    CHECK(outside.is_error);
    std::filesystem::remove_all(dir);
}

TEST_CASE("MCP through the processor: the model calls an MCP tool, recorded like any tool call", "[integration][ai][mcp]") {
    testing::Stack s("aiproc-mcp");
    fakes::FakeOpenAI fake;
    fake.push_tool_calls({{"call_1", "everything__echo", {{"message", "hello mcp"}}}});
    fake.on([](const json& req) { return req["messages"].back()["role"] == "tool"; },
            [](const json& req) {
                const auto& last = req["messages"].back();
                if (last.value("tool_call_id", "") != "call_1")
                    return fakes::FakeOpenAI::tool_calls_body({{"call_3", "task_complete", {{"summary", "done"}}}});
                return fakes::FakeOpenAI::tool_calls_body({{"call_2", "send_message", {{"text", last["content"]}}}});
            });
    json servers = {{"everything", {{"command", "node"}, {"args", {server_js("server-everything"), "stdio"}}}}};
    testing::Process ai({testing::build_dir() + "/ai-processor/engram-ai-processor"},
                        {{"DATABASE_URL", s.db()},
                         {"NATS_URL", s.nats().url()},
                         {"EVENT_STORE_URL", s.url()},
                         {"LOG_LEVEL", "info"},
                         {"AI_PROCESSOR_LISTEN", "127.0.0.1:0"},
                         {"AI_PROCESSOR_LEASE_TTL_MS", "2000"},
                         {"LLM_BASE_URL", fake.base_url()},
                         {"MCP_SERVERS", servers.dump()}},
                        s.dir() + "/ai-mcp.log");
    const std::string session = "session:api:mcp";
    auto tid = Uuid::v4().str();
    http::Client c(s.url());
    auto r = c.post_json("/events",
                         {{"id", tid},
                          {"type", "TriggerReceived"},
                          {"aggregate_id", session},
                          {"data", {{"source", "api"}, {"user_id", "api:u"}, {"session_id", session}, {"message", "echo it"}}}});
    REQUIRE(r.ok());
    REQUIRE(r->status == 201);
    auto of = [&](const std::string& type) {
        std::vector<json> out;
        for (auto& e : s.aggregate(session))
            if (e["type"] == type) out.push_back(e);
        return out;
    };
    bool done = testing::eventually([&] { return !of("AIProcessingCompleted").empty(); }, 60s);
    INFO(testing::tail_file(ai.log_path()));
    REQUIRE(done);
    auto called = of("ToolCalled");
    REQUIRE(called.size() >= 1);
    CHECK(called[0]["data"]["tool"] == "everything__echo");
    CHECK(called[0]["data"]["arguments"] == json{{"message", "hello mcp"}});
    auto completed = of("ToolCompleted");
    REQUIRE(completed.size() >= 1);
    CHECK(completed[0]["data"]["result"] == "Echo: hello mcp");
    CHECK(completed[0]["data"]["is_error"] == false);
    auto sent = of("MessageGenerated");
    REQUIRE(sent.size() == 1);
    CHECK(sent[0]["data"]["text"] == "Echo: hello mcp");
    // The model was offered the MCP tool with its schema, beside the built-in ones.
    auto reqs = fake.requests();
    REQUIRE_FALSE(reqs.empty());
    bool offered = false, builtin = false;
    for (auto& t : reqs[0]["tools"]) {
        offered = offered ||
                  (t["function"]["name"] == "everything__echo" && t["function"]["parameters"]["properties"].contains("message"));
        builtin = builtin || t["function"]["name"] == "send_message";
    }
    CHECK(offered);
    CHECK(builtin);
}

TEST_CASE("MCP over Streamable HTTP: server-everything's tools listed and called, a timeout is a tool error",
          "[integration][ai][mcp]") {
    const int port = testing::free_port();
    testing::Process server({"node", server_js("server-everything"), "streamableHttp"}, {{"PORT", std::to_string(port)}},
                            testing::make_temp_dir("mcp-http") + "/server.log");
    ai::McpServerConfig cfg;
    cfg.name = "remote";
    cfg.url = "http://127.0.0.1:" + std::to_string(port) + "/mcp";
    cfg.headers = {{"X-Engram-Test", "1"}};
    ai::McpToolbox box({cfg}, 1500ms);
    REQUIRE(testing::eventually([&] { return box.start().empty(); }, 30s));
    auto tools = box.tools();
    auto echo = tool_named(tools, "remote__echo");
    REQUIRE(echo);
    CHECK(echo->parameters["properties"].contains("message"));
    auto r = call(*echo, {{"message", "over http"}});
    INFO(r.result.dump());
    CHECK_FALSE(r.is_error);
    CHECK(r.result == "Echo: over http");
    auto sum = tool_named(tools, "remote__get-sum");
    REQUIRE(sum);
    CHECK(call(*sum, {{"a", 20}, {"b", 22}}).result.dump().find("42") != std::string::npos);
    auto slow = tool_named(tools, "remote__trigger-long-running-operation");
    REQUIRE(slow);
    auto t = call(*slow, {{"duration", 10}, {"steps", 2}});
    CHECK(t.is_error);
    CHECK(t.result.get<std::string>().find("did not answer") != std::string::npos);
    CHECK(call(*echo, {{"message", "again"}}).result == "Echo: again");
}

TEST_CASE("MCP: a hostile server's floods, deep or huge answers, junk and silence are tool errors or capped; it stays usable",
          "[integration][ai][mcp]") {
    ai::McpServerConfig hostile{"hostile", {"python3", testing::source_dir() + "/tests/mcp/hostile_server.py"}, {}, {}, {}};
    ai::McpToolbox box({hostile}, 1500ms);
    REQUIRE(box.start().empty());
    auto tools = box.tools();
    CHECK(tools.size() == 128);  // 510 listed: the first 128 usable ones
    CHECK_FALSE(tool_named(tools, "hostile__huge_schema"));
    CHECK(tool_named(tools, "hostile__dup_name")->description == "[MCP hostile] hostile dup.name");  // the first of the two
    CHECK(tool_named(tools, "hostile__many119"));
    CHECK_FALSE(tool_named(tools, "hostile__many120"));
    auto run = [&](const std::string& name) {
        auto t = tool_named(tools, "hostile__" + name);
        REQUIRE(t);
        return call(*t, json::object());
    };
    auto ok = run("ok");
    CHECK_FALSE(ok.is_error);
    CHECK(ok.result == "fine");

    auto garbage = run("garbage");  // junk lines are skipped, the answer after them is used
    CHECK_FALSE(garbage.is_error);
    CHECK(garbage.result == "fine after garbage");

    auto big = run("big");
    CHECK_FALSE(big.is_error);
    REQUIRE(big.result.is_string());
    CHECK(big.result.get<std::string>().size() < (65u << 10));
    CHECK(big.result.get<std::string>().find("(truncated: the tool returned more than 64 KiB)") != std::string::npos);

    for (const char* name : {"deep", "silent", "wrong_id"}) {
        INFO(name);
        auto r = run(name);
        CHECK(r.is_error);
        CHECK(r.result.get<std::string>().find("did not answer tools/call within 1500 ms") != std::string::npos);
    }
    CHECK(run("ok").result == "fine");  // still the same process, still answering

    auto flood = run("flood");  // past 16 MiB without a line end: the server is stopped
    CHECK(flood.is_error);
    CHECK(flood.result.get<std::string>().find("hostile") != std::string::npos);
    auto again = run("ok");  // started again on the next call
    CHECK_FALSE(again.is_error);
    CHECK(again.result == "fine");
}

TEST_CASE("MCP: what one server's tools add to every model request is bounded", "[integration][ai][mcp]") {
    ai::McpServerConfig wide{"wide", {"python3", testing::source_dir() + "/tests/mcp/hostile_server.py", "wide"}, {}, {}, {}};
    ai::McpToolbox box({wide}, 1500ms);
    REQUIRE(box.start().empty());
    auto tools = box.tools();
    std::size_t bytes = 0;
    for (const auto& t : tools) bytes += t.description.size() + t.parameters.dump().size();
    CHECK(tools.size() > 50);
    CHECK(tools.size() < 200);  // 200 listed, 3 KiB each
    CHECK(bytes <= (256u << 10));
}
