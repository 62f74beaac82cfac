#pragma once
// MCP (Model Context Protocol) tools for the agent: the AI processor is an MCP client of the servers
// named in MCP_SERVERS, over stdio (newline-delimited JSON-RPC 2.0 on the server's stdin/stdout).
// Their tools are offered to the model beside the built-in ones as `<server>__<tool>`, with their
// input schemas passed through; a call is recorded like any other tool call (ToolCalled before,
// ToolCompleted after), so a resumed run never calls it again.
//
// Threading: one reader thread per server process reads its answers and notifications; requests
// come from any agent worker and wait for their answer (bounded by a timeout). A server that died
// is started again on the next call; a timeout, a dead server or a JSON-RPC error is a tool error
// the model sees, never a failed run.
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engram/core/result.h"
#include "tools.h"

namespace engram::ai {

struct McpServerConfig {
    std::string name;                        // [A-Za-z0-9_-], 1-32 characters: the tools' prefix
    std::vector<std::string> command;        // argv: "command" then "args"
    std::map<std::string, std::string> env;  // added to the processor's environment
};

// MCP_SERVERS: {"<name>": {"command": "node", "args": ["server.js", "stdio"], "env": {"K": "v"}}, ...}
// (the shape MCP hosts use). Empty or "{}" = none. Errors name the server and the field.
Result<std::vector<McpServerConfig>> parse_mcp_servers(const std::string& json_text);

// The name offered to the model: <server>__<tool>, characters outside [A-Za-z0-9_-] as '_', at most
// 64 characters (the OpenAI function-name rule).
std::string mcp_tool_name(const std::string& server, const std::string& tool);

class McpServer;

class McpToolbox {
public:
    explicit McpToolbox(std::vector<McpServerConfig> servers, std::chrono::milliseconds call_timeout = std::chrono::seconds(30));
    ~McpToolbox();
    McpToolbox(const McpToolbox&) = delete;
    McpToolbox& operator=(const McpToolbox&) = delete;

    // Starts every server and lists its tools; a server that cannot start is reported in the
    // result (one line each) and retried on the next tools() call, the others are usable.
    std::vector<std::string> start();
    // The tools of every server, listed again for a server that announced
    // notifications/tools/list_changed or was restarted.
    std::vector<Tool> tools();

private:
    std::vector<std::shared_ptr<McpServer>> servers_;
    std::chrono::milliseconds timeout_;
};

}  // namespace engram::ai
