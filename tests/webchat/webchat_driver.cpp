// The web chat's browser test, end to end: starts the whole stack on loopback (throwaway PostgreSQL,
// nats-server, the event store, the memory processor, the AI processor with its offline provider, and
// the engram-gateway binary), then runs `node webchat.test.mjs <gateway url> <screenshot>`, which
// drives Debian's headless Chromium through playwright-core.
//
// Usage: webchat_driver <dir holding webchat.test.mjs and node_modules> <screenshot path> [stream]
// With `stream`, the AI processor talks to the fake model (tests/fakes) streaming its answers slowly,
// and the browser runs webchat_stream.test.mjs: the answer appears as it is written.
// A missing node, chromium or node_modules is a failure, never a skip: deploy/install-deps.sh and
// deploy/test.sh (npm ci) install them.
#include "engram/http/client.h"
#include "engram/testing/testing.h"
#include "fake_openai.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

extern char** environ;

using namespace engram;
namespace fs = std::filesystem;

namespace {

constexpr const char* kStreamedAnswer =
    "Noted. I will keep that in mind from now on, and whenever you ask me about it later I can tell you "
    "exactly what you said, in your own words, without you having to repeat yourself.";

std::optional<std::string> in_path(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::string p = path ? path : "/usr/bin:/bin";
    std::size_t start = 0;
    while (start <= p.size()) {
        auto end = p.find(':', start);
        std::string dir = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (!dir.empty() && ::access((dir + "/" + name).c_str(), X_OK) == 0) return dir + "/" + name;
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return std::nullopt;
}

int fail(const std::string& why) {
    std::cerr << "webchat_browser: FAILED: " << why << "\n";
    return 1;
}

bool wait_healthy(const std::string& url, testing::Process& p, const std::string& name) {
    bool ok = testing::eventually(
        [&] {
            http::ClientOptions o;
            o.timeout = std::chrono::milliseconds(1000);
            http::Client c(url, o);
            auto r = c.get("/healthz");
            return r.ok() && r->status == 200;
        },
        std::chrono::seconds(30));
    if (!ok) std::cerr << name << " did not become healthy; its log:\n" << testing::tail_file(p.log_path()) << "\n";
    return ok;
}

// Runs argv with the test's stdout/stderr, so the browser test's lines show up in ctest's output.
int run(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> a, e;
    for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    for (auto& s : env) e.push_back(const_cast<char*>(s.c_str()));
    e.push_back(nullptr);
    pid_t pid = 0;
    if (int rc = posix_spawn(&pid, argv[0].c_str(), nullptr, nullptr, a.data(), e.data()); rc != 0) return 127;
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3 && !(argc == 4 && std::string(argv[3]) == "stream"))
        return fail("usage: webchat_driver <tests/webchat dir> <screenshot.png> [stream]");
    const std::string dir = argv[1];
    const std::string screenshot = argv[2];
    const bool streamed = argc == 4;

    const char* chromium_env = std::getenv("ENGRAM_CHROMIUM");
    const std::string chromium = chromium_env && *chromium_env ? chromium_env : "/usr/bin/chromium";
    auto node = in_path("node");
    if (!node) return fail("node is not installed (deploy/install-deps.sh installs nodejs)");
    if (::access(chromium.c_str(), X_OK) != 0)
        return fail(chromium + " is missing (deploy/install-deps.sh installs Debian's chromium)");
    if (!fs::exists(dir + "/node_modules/playwright-core/package.json"))
        return fail(dir + "/node_modules is missing playwright-core: run `npm ci --prefix " + dir + "` (deploy/test.sh does)");
    fs::create_directories(fs::path(screenshot).parent_path());
    fs::remove(screenshot);

    const std::string token = "webchat-e2e-token";
    const std::string logs = testing::make_temp_dir("webchat-e2e");
    testing::Nats nats;
    std::string db = testing::Postgres::shared().create_database();
    int store_port = testing::free_port();
    std::string store_url = "http://127.0.0.1:" + std::to_string(store_port);
    std::map<std::string, std::string> common = {{"DATABASE_URL", db},
                                                 {"NATS_URL", nats.url()},
                                                 {"EVENT_STORE_URL", store_url},
                                                 {"ENGRAM_API_TOKEN", token},
                                                 {"LOG_LEVEL", "info"}};
    auto env = [&](std::map<std::string, std::string> more) {
        for (auto& [k, v] : common) more.emplace(k, v);
        return more;
    };
    auto bin = [](const std::string& rel) { return testing::build_dir() + "/" + rel; };

    testing::Process store({bin("event-store/engram-event-store")},
                           env({{"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(store_port)}}), logs + "/store.log");
    if (!testing::eventually(
            [&] {
                http::Client c(store_url);
                auto r = c.get("/readyz", {{"Authorization", "Bearer " + token}});
                return r.ok() && r->status == 200;
            },
            std::chrono::seconds(30)))
        return fail("the event store did not become ready:\n" + testing::tail_file(store.log_path()));
    int memory_port = testing::free_port();
    testing::Process memory({bin("memory-processor/engram-memory-processor")},
                            env({{"MEMORY_PROCESSOR_LISTEN", "127.0.0.1:" + std::to_string(memory_port)}}), logs + "/memory.log");
    int ai_port = testing::free_port();
    // Streamed: a model writing slowly enough for a person (and the test) to watch, 3 bytes every 60 ms;
    // each run notes what it is told with `remember`, then answers.
    fakes::FakeOpenAI fake;
    fake.set_streaming(true, 3, std::chrono::milliseconds(60));
    auto assistant_turns = [](const nlohmann::json& r) {
        int n = 0;
        for (const auto& m : r["messages"]) n += m.value("role", "") == "assistant";
        return n;
    };
    // Its first answer also calls a tool of a real MCP server (server-everything's echo, over stdio).
    fake.on([assistant_turns](const nlohmann::json& r) { return assistant_turns(r) == 0; },
            [](const nlohmann::json& r) {
                auto n = std::to_string(r["messages"].dump().size());
                auto body = fakes::FakeOpenAI::tool_calls_body(
                    {{"call_" + n, "remember", {{"text", fakes::FakeOpenAI::last_user_message(r)}}},
                     {"mcp_" + n, "everything__echo", {{"message", "noted: " + fakes::FakeOpenAI::last_user_message(r)}}}});
                body["choices"][0]["message"]["content"] = "Let me note that.";
                return body;
            });
    fake.on([assistant_turns](const nlohmann::json& r) { return assistant_turns(r) >= 1; },
            [](const nlohmann::json&) { return fakes::FakeOpenAI::text_body(kStreamedAnswer); });
    const std::string everything = dir + "/../mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js";
    if (streamed && !fs::exists(everything))
        return fail(everything + " is missing: the test command installs it (npm ci --prefix tests/mcp)");
    const std::string mcp_servers = nlohmann::json{{"everything", {{"command", *node}, {"args", {everything, "stdio"}}}}}.dump();
    // No LLM_BASE_URL: the AI processor answers with its offline, rule-based provider.
    testing::Process ai({bin("ai-processor/engram-ai-processor")},
                        env({{"AI_PROCESSOR_LISTEN", "127.0.0.1:" + std::to_string(ai_port)},
                             {"LLM_BASE_URL", streamed ? fake.base_url() : ""},
                             {"LLM_STREAM", "true"},
                             {"MCP_SERVERS", streamed ? mcp_servers : ""}}),
                        logs + "/ai.log");
    int gw_port = testing::free_port();
    std::string gw_url = "http://127.0.0.1:" + std::to_string(gw_port);
    testing::Process gateway(
        {bin("interfaces/gateway/engram-gateway")},
        env({{"GATEWAY_LISTEN", "127.0.0.1:" + std::to_string(gw_port)}, {"WEBCHAT_SECRET", "webchat-e2e-secret-0123456789"}}),
        logs + "/gateway.log");
    if (!wait_healthy("http://127.0.0.1:" + std::to_string(memory_port), memory, "the memory processor") ||
        !wait_healthy("http://127.0.0.1:" + std::to_string(ai_port), ai, "the AI processor") ||
        !wait_healthy(gw_url, gateway, "the gateway"))
        return fail("the stack did not start");

    std::cout << "stack up: gateway " << gw_url << ", store " << store_url << ", logs in " << logs << std::endl;
    int rc = run({*node, dir + (streamed ? "/webchat_stream.test.mjs" : "/webchat.test.mjs"), gw_url, screenshot},
                 {"CHROMIUM=" + chromium, "STORE_URL=" + store_url, "STORE_TOKEN=" + token,
                  std::string("STREAMED_ANSWER=") + kStreamedAnswer});
    if (rc != 0) {
        for (auto* p : {&gateway, &ai, &memory, &store})
            std::cerr << "---- " << p->log_path() << "\n" << testing::tail_file(p->log_path(), 3000) << "\n";
        return fail("the browser test exited with " + std::to_string(rc));
    }
    if (!fs::exists(screenshot)) return fail("no screenshot at " + screenshot);
    std::cout << "screenshot: " << screenshot << std::endl;
    return 0;
}
