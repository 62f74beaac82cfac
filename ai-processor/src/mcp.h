#pragma once
// MCP (Model Context Protocol) tools for the agent: the AI processor is an MCP client of the servers
// named in MCP_SERVERS, over stdio (newline-delimited JSON-RPC 2.0 on the server's stdin/stdout) or
// Streamable HTTP (JSON-RPC POSTed to one URL, answered as JSON or as a server-sent event stream).
// Their tools are offered to the model beside the built-in ones as `<server>__<tool>`, with their
// input schemas passed through; a call is recorded like any other tool call (ToolCalled before,
// ToolCompleted after), so a resumed run never calls it again once its ToolCompleted is in the log
// (a crash between the two calls it again, as for every tool; a timed-out call may still finish on
// the server: MCP's cancellation is advisory).
//
// Threading: one reader thread per server process reads its answers and notifications; requests
// come from any agent worker and wait for their answer (bounded by a timeout). A server that died
// is started again on the next call; a timeout, a dead server or a JSON-RPC error is a tool error
// the model sees, never a failed run.
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/core/result.h"
#include "tools.h"

namespace engram::ai {

struct McpServerConfig {
    std::string name;                            // [A-Za-z0-9_-], 1-32 characters: the tools' prefix
    std::vector<std::string> command;            // stdio: argv, "command" then "args"
    std::map<std::string, std::string> env;      // stdio: added to the processor's environment
    std::string url;                             // Streamable HTTP: the endpoint (http:// or https://)
    std::map<std::string, std::string> headers;  // Streamable HTTP: sent with every request
};

// MCP_SERVERS: {"<name>": {"command": "node", "args": ["server.js", "stdio"], "env": {"K": "v"}},
// "<other>": {"url": "https://host/mcp", "headers": {"Authorization": "Bearer ..."}}} (the shape MCP
// hosts use). Empty or "{}" = none. Errors name the server and the field.
Result<std::vector<McpServerConfig>> parse_mcp_servers(const std::string& json_text);

// The name offered to the model: <server>__<tool>, characters outside [A-Za-z0-9_-] as '_', at most
// 64 characters (the OpenAI function-name rule).
std::string mcp_tool_name(const std::string& server, const std::string& tool);

class McpConnection;

class McpToolbox {
public:
    explicit McpToolbox(std::vector<McpServerConfig> servers, std::chrono::milliseconds call_timeout = std::chrono::seconds(30));
    ~McpToolbox();
    McpToolbox(const McpToolbox&) = delete;
    McpToolbox& operator=(const McpToolbox&) = delete;

    // Starts every server and lists its tools; a server that cannot start is reported in the
    // result (one line each) and retried in the background, the others are usable. Then a
    // background thread lists again the tools of a server that announced
    // notifications/tools/list_changed, was restarted or could not start.
    std::vector<std::string> start();
    // The tools as last listed: never waits for a server (every run asks).
    std::vector<Tool> tools();

private:
    std::vector<Tool> list_all();
    std::vector<std::shared_ptr<McpConnection>> servers_;
    std::chrono::milliseconds timeout_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Tool> cached_;  // guarded by mu_
    std::mutex warn_mu_;
    std::set<std::string> warned_;  // "<server>/<problem>" said once (list_all runs every second)
    bool stopping_ = false;
    std::thread refresher_;
};

}  // namespace engram::ai
