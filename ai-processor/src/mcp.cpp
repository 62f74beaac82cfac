#include "mcp.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "engram/core/json.h"
#include "engram/http/client.h"
#include "engram/log/log.h"

namespace engram::ai {

using nlohmann::json;

namespace {

constexpr std::size_t kMaxLine = 16u << 20;        // one JSON-RPC message from a server
constexpr std::size_t kMaxResultText = 64u << 10;  // what a tool result may put in the log
// What one server may add to every model request: a few tools of reasonable size.
constexpr std::size_t kMaxToolsPerServer = 128;
constexpr std::size_t kMaxToolSchema = 32u << 10;
constexpr std::size_t kMaxToolBytesPerServer = 256u << 10;  // descriptions + schemas of one server's tools
constexpr const char* kProtocolVersion = "2025-06-18";

bool valid_server_name(const std::string& s) {
    if (s.empty() || s.size() > 32) return false;
    for (char c : s)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
    return true;
}

}  // namespace

Result<std::vector<McpServerConfig>> parse_mcp_servers(const std::string& text) {
    std::vector<McpServerConfig> out;
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) return out;
    auto j = parse_json(text, "MCP_SERVERS");
    if (!j) return std::move(j).error();
    if (!j->is_object())
        return Error::make("invalid_config", "MCP_SERVERS must be a JSON object {\"<name>\": {\"command\": ...}}");
    for (auto& [name, s] : j->items()) {
        auto bad = [&](const std::string& why) { return Error::make("invalid_config", "MCP_SERVERS." + name + ": " + why); };
        if (!valid_server_name(name)) return bad("a server name is 1-32 characters of A-Z a-z 0-9 _ -");
        if (!s.is_object()) return bad("must be an object with \"command\"");
        McpServerConfig c;
        c.name = name;
        if (s.contains("url")) {
            if (!s["url"].is_string()) return bad("\"url\" must be a string");
            c.url = s["url"].get<std::string>();
            if (c.url.rfind("http://", 0) != 0 && c.url.rfind("https://", 0) != 0)
                return bad("\"url\" must start with http:// or https://");
            if (s.contains("headers")) {
                if (!s["headers"].is_object()) return bad("\"headers\" must be an object of strings");
                for (auto& [k, v] : s["headers"].items()) {
                    if (!v.is_string() || k.empty() || k.find_first_of("\r\n:") != std::string::npos ||
                        v.get<std::string>().find_first_of("\r\n") != std::string::npos)
                        return bad("\"headers\" must be an object of strings (no line breaks)");
                    c.headers[k] = v.get<std::string>();
                }
            }
            for (auto& [k, v] : s.items())
                if (k != "url" && k != "headers") return bad("unknown field \"" + k + "\" (a url server takes url and headers)");
            out.push_back(std::move(c));
            continue;
        }
        if (!s.contains("command") || !s["command"].is_string() || s["command"].get<std::string>().empty())
            return bad("\"command\" (stdio) or \"url\" (Streamable HTTP) must be a non-empty string");
        c.command.push_back(s["command"].get<std::string>());
        if (s.contains("args")) {
            if (!s["args"].is_array()) return bad("\"args\" must be an array of strings");
            for (auto& a : s["args"]) {
                if (!a.is_string()) return bad("\"args\" must be an array of strings");
                c.command.push_back(a.get<std::string>());
            }
        }
        if (s.contains("env")) {
            if (!s["env"].is_object()) return bad("\"env\" must be an object of strings");
            for (auto& [k, v] : s["env"].items()) {
                if (!v.is_string() || k.empty() || k.find('=') != std::string::npos)
                    return bad("\"env\" must be an object of strings");
                c.env[k] = v.get<std::string>();
            }
        }
        for (auto& [k, v] : s.items())
            if (k != "command" && k != "args" && k != "env") return bad("unknown field \"" + k + "\"");
        out.push_back(std::move(c));
    }
    return out;
}

std::string mcp_tool_name(const std::string& server, const std::string& tool) {
    std::string n = server + "__" + tool;
    for (auto& c : n)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) c = '_';
    if (n.size() > 64) n.resize(64);
    return n;
}

namespace {
// A tools/call result as the model and the log see it: text joined, images and resources described
// (not their bytes), structured content when there is no text, at most 64 KiB.
ToolResult tool_result(const json& r) {
    std::string text;
    json other = json::array();
    if (r.is_object() && r.contains("content") && r["content"].is_array()) {
        for (auto& c : r["content"]) {
            const bool typed = c.is_object() && c.contains("type") && c["type"].is_string();
            if (typed && c["type"] == "text" && c.contains("text") && c["text"].is_string()) {
                text += (text.empty() ? "" : "\n") + c["text"].get<std::string>();
            } else if (c.is_object()) {
                json brief = {{"type", typed ? c["type"].get<std::string>() : std::string("unknown")}};
                for (const char* k : {"mimeType", "uri", "name"})
                    if (c.contains(k) && c[k].is_string()) brief[k] = c[k];
                if (c.contains("resource") && c["resource"].is_object() && c["resource"].contains("uri"))
                    brief["uri"] = c["resource"]["uri"];
                other.push_back(brief);
            }
        }
    }
    json result;
    if (!other.empty()) {
        result = {{"text", text}, {"content", other}};
    } else if (text.empty() && r.is_object() && r.contains("structuredContent")) {
        result = r["structuredContent"];
    } else {
        result = text;
    }
    if (result.is_string() && result.get<std::string>().size() > kMaxResultText) {
        auto t = result.get<std::string>();
        t.resize(kMaxResultText);
        result = t + "\n(truncated: the tool returned more than 64 KiB)";
    } else if (!result.is_string() && result.dump().size() > kMaxResultText) {
        result = "(the tool's structured result is over 64 KiB and was dropped)";
    }
    ToolResult t = ToolResult::ok(std::move(result));
    t.is_error = r.is_object() && r.contains("isError") && r["isError"] == true;
    return t;
}
// A JSON-RPC answer's result, or its error as an Error naming the server and the method.
Result<json> rpc_result(const std::string& server, const std::string& method, const json& answer) {
    if (answer.contains("error")) {
        const auto& e = answer["error"];
        std::string m =
            e.is_object() && e.contains("message") && e["message"].is_string() ? e["message"].get<std::string>() : e.dump();
        return Error::make("mcp_error", "MCP server " + server + " refused " + method + ": " + m);
    }
    return answer.contains("result") ? answer["result"] : json::object();
}

// Every page of tools/list (at most 50), the entries that have a name.
Result<std::vector<json>> list_tool_pages(const std::function<Result<json>(const json&)>& list) {
    std::vector<json> out;
    std::string cursor;
    for (int page = 0; page < 50; ++page) {
        json params = json::object();
        if (!cursor.empty()) params["cursor"] = cursor;
        auto r = list(params);
        if (!r) return r.error();
        if (r->contains("tools") && (*r)["tools"].is_array())
            for (auto& t : (*r)["tools"])
                if (t.is_object() && t.contains("name") && t["name"].is_string()) out.push_back(t);
        if (!r->contains("nextCursor") || !(*r)["nextCursor"].is_string()) break;
        cursor = (*r)["nextCursor"].get<std::string>();
    }
    return out;
}
}  // namespace

// What the toolbox needs of a server, whatever the transport.
class McpConnection {
public:
    explicit McpConnection(std::chrono::milliseconds timeout) : timeout_(timeout) {}
    virtual ~McpConnection() = default;
    virtual const std::string& name() const = 0;

    // Lists the tools (every page) when stale; the cached list otherwise.
    Result<std::vector<json>> tools();
    ToolResult call(const std::string& tool, const json& args) {
        if (auto s = connect(); !s) return ToolResult::error(s.error().detail);
        auto r = send("tools/call", {{"name", tool}, {"arguments", args.is_object() ? args : json::object()}}, timeout_);
        if (!r) return ToolResult::error(r.error().detail);
        return tool_result(*r);
    }

protected:
    virtual Status connect() = 0;  // connected and initialized, (re)connecting when needed
    virtual Result<json> send(const std::string& method, json params, std::chrono::milliseconds timeout) = 0;
    void mark_stale() { stale_ = true; }  // (re)connected, or the server announced a new list
    std::chrono::milliseconds timeout_;

private:
    std::mutex list_mu_;
    std::atomic<bool> stale_{true};
    std::vector<json> cached_;  // guarded by list_mu_
};

Result<std::vector<json>> McpConnection::tools() {
    if (auto s = connect(); !s) return s.error();
    std::lock_guard lk(list_mu_);
    if (!stale_.exchange(false)) return cached_;
    auto out = list_tool_pages([&](const json& params) { return send("tools/list", params, timeout_); });
    if (!out) {
        stale_ = true;
        return out.error();
    }
    cached_ = *out;
    return out;
}

// One server process and its JSON-RPC session.
class McpServer : public McpConnection {
public:
    McpServer(McpServerConfig c, std::chrono::milliseconds timeout) : McpConnection(timeout), cfg_(std::move(c)) {}
    ~McpServer() override { stop(); }

    const std::string& name() const override { return cfg_.name; }

    // Running and initialized, starting it when needed.
    Status ensure_started() {
        std::lock_guard start_lk(start_mu_);
        {
            std::lock_guard lk(mu_);
            if (alive_) return ok();
        }
        // A server that cannot start is not tried again at once by every caller.
        if (std::chrono::steady_clock::now() - failed_at_ < std::chrono::seconds(5))
            return Error::make("mcp_unavailable", "MCP server " + cfg_.name + " could not start: " + failure_);
        stop_process();
        auto fail = [&](Error e) {
            failed_at_ = std::chrono::steady_clock::now();
            failure_ = e.detail;
            return e;
        };
        if (auto s = spawn(); !s) return fail(s.error());
        json params = {{"protocolVersion", kProtocolVersion},
                       {"capabilities", json::object()},
                       {"clientInfo", {{"name", "engram"}, {"version", "0.1.0"}}}};
        auto r = request("initialize", params, std::min(timeout_, std::chrono::milliseconds(20000)));
        if (!r) {
            stop_process();
            return fail(Error::make("mcp_unavailable", "MCP server " + cfg_.name + " did not initialize: " + r.error().detail));
        }
        notify("notifications/initialized", json::object());
        mark_stale();  // (re)started: list its tools again
        log_->info("MCP server {} started (pid {}): {}", cfg_.name, pid_,
                   r->is_object() && r->contains("serverInfo") ? (*r)["serverInfo"].dump() : std::string("{}"));
        return ok();
    }

    Result<json> request(const std::string& method, json params, std::chrono::milliseconds timeout) {
        std::int64_t id;
        {
            std::lock_guard lk(mu_);
            if (!alive_) return Error::make("mcp_unavailable", "MCP server " + cfg_.name + " is not running");
            id = ++next_id_;
            pending_[id] = std::nullopt;
        }
        json msg = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};
        if (!write_line(msg.dump())) {
            std::lock_guard lk(mu_);
            pending_.erase(id);
            return Error::make("mcp_unavailable", "MCP server " + cfg_.name + " closed its input");
        }
        std::unique_lock lk(mu_);
        bool answered = cv_.wait_for(lk, timeout, [&] {
            auto it = pending_.find(id);
            return !alive_ || (it != pending_.end() && it->second.has_value());
        });
        auto it = pending_.find(id);
        std::optional<json> answer = it != pending_.end() ? std::move(it->second) : std::nullopt;
        pending_.erase(id);
        lk.unlock();
        if (!answer) {
            if (!answered) {
                notify("notifications/cancelled", {{"requestId", id}, {"reason", "timed out"}});
                return Error::make("timeout", "MCP server " + cfg_.name + " did not answer " + method + " within " +
                                                  std::to_string(timeout.count()) + " ms");
            }
            return Error::make("mcp_unavailable", "MCP server " + cfg_.name + " exited before answering " + method);
        }
        return rpc_result(cfg_.name, method, *answer);
    }

    void notify(const std::string& method, json params) {
        write_line(json{{"jsonrpc", "2.0"}, {"method", method}, {"params", std::move(params)}}.dump());
    }

protected:
    Status connect() override { return ensure_started(); }
    Result<json> send(const std::string& method, json params, std::chrono::milliseconds timeout) override {
        return request(method, std::move(params), timeout);
    }

public:
    void stop() {
        std::lock_guard start_lk(start_mu_);
        stop_process();
    }

private:
    Status spawn() {
        int in[2], out[2];
        if (pipe2(in, O_CLOEXEC) != 0) return Error::make("mcp_unavailable", std::string("pipe: ") + std::strerror(errno));
        if (pipe2(out, O_CLOEXEC) != 0) {
            ::close(in[0]);
            ::close(in[1]);
            return Error::make("mcp_unavailable", std::string("pipe: ") + std::strerror(errno));
        }
        std::vector<std::string> envs;
        for (char** e = environ; *e; ++e) {
            std::string kv = *e;
            auto k = kv.substr(0, kv.find('='));
            if (!cfg_.env.count(k)) envs.push_back(kv);
        }
        for (auto& [k, v] : cfg_.env) envs.push_back(k + "=" + v);
        std::vector<char*> argv, envp;
        for (auto& a : cfg_.command) argv.push_back(a.data());
        argv.push_back(nullptr);
        for (auto& e : envs) envp.push_back(e.data());
        envp.push_back(nullptr);
        pid_t pid = fork();
        if (pid < 0) {
            for (int fd : {in[0], in[1], out[0], out[1]}) ::close(fd);
            return Error::make("mcp_unavailable", std::string("fork: ") + std::strerror(errno));
        }
        if (pid == 0) {
            dup2(in[0], 0);
            dup2(out[1], 1);
            int devnull = ::open("/dev/null", O_WRONLY);
            if (devnull >= 0) dup2(devnull, 2);  // a server's own log is not ours to interleave
            // Nothing of ours leaks into it: not our sockets (Asio's are not close-on-exec), not our
            // blocked signals (the runtime blocks SIGTERM for its signal thread), not SIGPIPE ignored.
            ::close_range(3, ~0U, 0);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, nullptr);
            ::signal(SIGPIPE, SIG_DFL);
            setpgid(0, 0);
            execvpe(argv[0], argv.data(), envp.data());
            _exit(127);
        }
        ::close(in[0]);
        ::close(out[1]);
        ::fcntl(in[1], F_SETFL, ::fcntl(in[1], F_GETFL) | O_NONBLOCK);  // writes are bounded (write_line)
        {
            std::lock_guard lk(mu_);
            pid_ = pid;
            in_fd_ = in[1];
            out_fd_ = out[0];
            alive_ = true;
        }
        reader_ = std::thread([this, fd = out[0]] { read_loop(fd); });
        return ok();
    }

    void stop_process() {
        int pid;
        {
            std::lock_guard w(write_mu_);  // no write is in flight on the fd being closed
            std::lock_guard lk(mu_);
            if (in_fd_ >= 0) ::close(in_fd_);  // a stdio server exits when its input ends
            in_fd_ = -1;
            pid = pid_;
            pid_ = 0;
        }
        if (pid > 0) {
            // Up to 1 s to exit by itself; not reaped yet (WNOWAIT), so the pid and its process
            // group stay ours while its own children (npx, shells), which may hold its stdout, are
            // killed with it.
            for (int i = 0; i < 20; ++i) {
                siginfo_t info{};
                if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == pid) break;
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
            ::kill(-pid, SIGKILL);
            ::kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
        if (reader_.joinable()) reader_.join();
        std::lock_guard lk(mu_);
        if (out_fd_ >= 0) ::close(out_fd_);
        out_fd_ = -1;
        alive_ = false;
        pending_.clear();
        cv_.notify_all();
    }

    // Bounded: a server that stops reading its input is killed (its next call starts it again)
    // instead of blocking every caller behind a full pipe.
    bool write_line(const std::string& line) {
        std::lock_guard lk(write_mu_);
        int fd;
        {
            std::lock_guard g(mu_);
            fd = in_fd_;
        }
        if (fd < 0) return false;
        std::string data = line + "\n";
        std::size_t off = 0;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (off < data.size()) {
            auto n = ::write(fd, data.data() + off, data.size() - off);
            if (n > 0) {
                off += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
                pollfd p{fd, POLLOUT, 0};
                if (left.count() > 0 && ::poll(&p, 1, static_cast<int>(left.count())) > 0) continue;
                log_->warn("MCP server {} stopped reading its input: killed, started again on its next call", cfg_.name);
            }
            std::lock_guard g(mu_);
            if (pid_ > 0) ::kill(-pid_, SIGKILL);
            return false;
        }
        return true;
    }

    void handle(const std::string& line) {
        auto j = parse_json(line, "an MCP message");
        if (!j || !j->is_object()) return;  // not JSON-RPC: ignored
        auto& m = *j;
        bool has_method = m.contains("method") && m["method"].is_string();
        if (m.contains("id") && !has_method) {
            if (!m["id"].is_number_integer()) return;
            std::lock_guard lk(mu_);
            auto it = pending_.find(m["id"].get<std::int64_t>());
            if (it != pending_.end()) it->second = std::move(m);
            cv_.notify_all();
            return;
        }
        if (!has_method) return;
        auto method = m["method"].get<std::string>();
        if (m.contains("id")) {  // a request from the server: we offer no client features but ping
            json reply = {{"jsonrpc", "2.0"}, {"id", m["id"]}};
            if (method == "ping")
                reply["result"] = json::object();
            else
                reply["error"] = {{"code", -32601}, {"message", "engram does not offer " + method}};
            write_line(reply.dump());
            return;
        }
        if (method == "notifications/tools/list_changed") mark_stale();
    }

    void read_loop(int fd) {
        std::string buf;
        char chunk[65536];
        for (;;) {
            auto n = ::read(fd, chunk, sizeof chunk);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            buf.append(chunk, static_cast<std::size_t>(n));
            std::size_t start = 0;
            for (auto nl = buf.find('\n', start); nl != std::string::npos; nl = buf.find('\n', start)) {
                handle(buf.substr(start, nl - start));
                start = nl + 1;
            }
            buf.erase(0, start);
            if (buf.size() > kMaxLine) {
                log_->warn("MCP server {} sent a message over {} bytes: stopped", cfg_.name, kMaxLine);
                std::lock_guard lk(mu_);
                if (pid_ > 0) ::kill(pid_, SIGKILL);
                break;
            }
        }
        std::lock_guard lk(mu_);
        if (alive_) log_->warn("MCP server {} exited; it is started again on its next call", cfg_.name);
        alive_ = false;
        cv_.notify_all();
    }

    McpServerConfig cfg_;
    std::shared_ptr<spdlog::logger> log_ = log::get("mcp");
    std::mutex start_mu_, write_mu_, mu_;
    std::condition_variable cv_;
    std::map<std::int64_t, std::optional<json>> pending_;  // guarded by mu_
    std::int64_t next_id_ = 0;
    bool alive_ = false;
    int pid_ = 0, in_fd_ = -1, out_fd_ = -1;
    std::thread reader_;
    std::chrono::steady_clock::time_point failed_at_{};  // last failed start (guarded by start_mu_)
    std::string failure_;
};

// Streamable HTTP: each JSON-RPC message is POSTed to the server's URL, the answer comes back as
// JSON or as a server-sent event stream carrying it; the session id the server hands out at
// initialize goes back with every request (a 404 means it expired: the next call starts a new one).
// A client per request, so runs calling the same server do not wait for each other.
class McpHttp : public McpConnection {
public:
    McpHttp(McpServerConfig c, std::chrono::milliseconds timeout) : McpConnection(timeout), cfg_(std::move(c)) {
        auto scheme = cfg_.url.find("://");
        auto slash = cfg_.url.find('/', scheme + 3);
        base_ = slash == std::string::npos ? cfg_.url : cfg_.url.substr(0, slash);
        path_ = slash == std::string::npos ? "/" : cfg_.url.substr(slash);
    }
    const std::string& name() const override { return cfg_.name; }

protected:
    Status connect() override { return ensure_session(); }
    Result<json> send(const std::string& method, json params, std::chrono::milliseconds timeout) override {
        return rpc(method, std::move(params), timeout);
    }

private:
    Status ensure_session() {
        std::lock_guard lk(session_mu_);
        if (ready_) return ok();
        {
            std::lock_guard g(state_mu_);
            session_.clear();
        }
        json params = {{"protocolVersion", kProtocolVersion},
                       {"capabilities", json::object()},
                       {"clientInfo", {{"name", "engram"}, {"version", "0.1.0"}}}};
        std::string sid;
        auto r = rpc("initialize", params, std::min(timeout_, std::chrono::milliseconds(20000)), &sid);
        if (!r) return Error::make("mcp_unavailable", "MCP server " + cfg_.name + " did not initialize: " + r.error().detail);
        {
            std::lock_guard g(state_mu_);
            session_ = sid;
        }
        ready_ = true;
        mark_stale();
        (void)rpc("notifications/initialized", json::object(), std::chrono::milliseconds(5000), nullptr, true);
        log::get("mcp")->info("MCP server {} connected at {}", cfg_.name, cfg_.url);
        return ok();
    }

    Result<json> rpc(const std::string& method, json params, std::chrono::milliseconds timeout,
                     std::string* session_out = nullptr, bool notification = false) {
        std::int64_t id = ++next_id_;
        json msg = {{"jsonrpc", "2.0"}, {"method", method}, {"params", std::move(params)}};
        if (!notification) msg["id"] = id;
        http::Headers h = {{"Content-Type", "application/json"}, {"Accept", "application/json, text/event-stream"}};
        std::string sid;
        {
            std::lock_guard lk(state_mu_);
            sid = session_;
        }
        if (!sid.empty()) {
            h.emplace_back("Mcp-Session-Id", sid);
            h.emplace_back("MCP-Protocol-Version", kProtocolVersion);
        }
        for (const auto& [k, v] : cfg_.headers) h.emplace_back(k, v);
        http::ClientOptions co(timeout);
        co.response_limit = kMaxLine;
        http::Client c(base_, co);
        auto r = c.request("POST", path_, msg.dump(), h);
        if (!r) {
            if (r.error().code == "timeout")
                return Error::make("timeout", "MCP server " + cfg_.name + " did not answer " + method + " within " +
                                                  std::to_string(timeout.count()) + " ms");
            return Error::make("mcp_unavailable", "MCP server " + cfg_.name + " unreachable: " + r.error().detail);
        }
        if (notification) return json::object();
        if (r->status == 404 && !sid.empty()) {
            std::lock_guard lk(session_mu_);
            ready_ = false;  // the session expired: the next call starts a new one
            return Error::make("mcp_unavailable", "MCP server " + cfg_.name + " ended the session; retry");
        }
        if (r->status != 200)
            return Error::make("mcp_error",
                               "MCP server " + cfg_.name + " answered HTTP " + std::to_string(r->status) + " to " + method);
        if (session_out) *session_out = r->header("mcp-session-id");
        // The answer: the body itself, or the event of the stream that carries it.
        std::optional<json> answer;
        auto consider = [&](std::string_view text) {
            auto j = parse_json(text, "an MCP message");
            if (j && j->is_object() && j->contains("id") && (*j)["id"] == id && !j->contains("method")) answer = std::move(*j);
        };
        if (r->header("content-type").find("text/event-stream") != std::string::npos) {
            std::string data;
            std::size_t start = 0;
            const std::string& b = r->body;
            while (start <= b.size() && !answer) {
                auto nl = b.find('\n', start);
                std::string_view line(b.data() + start, (nl == std::string::npos ? b.size() : nl) - start);
                if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
                if (line.empty()) {
                    if (!data.empty()) consider(data);
                    data.clear();
                } else if (line.rfind("data:", 0) == 0) {
                    auto v = line.substr(5);
                    if (!v.empty() && v.front() == ' ') v.remove_prefix(1);
                    if (!data.empty()) data += '\n';
                    data.append(v);
                }
                if (nl == std::string::npos) break;
                start = nl + 1;
            }
            if (!answer && !data.empty()) consider(data);
        } else {
            consider(r->body);
        }
        if (!answer) return Error::make("mcp_error", "MCP server " + cfg_.name + " sent no answer to " + method);
        return rpc_result(cfg_.name, method, *answer);
    }

    McpServerConfig cfg_;
    std::string base_, path_;
    std::mutex session_mu_, state_mu_;
    bool ready_ = false;   // guarded by session_mu_
    std::string session_;  // guarded by state_mu_
    std::atomic<std::int64_t> next_id_{0};
};

McpToolbox::McpToolbox(std::vector<McpServerConfig> servers, std::chrono::milliseconds call_timeout) : timeout_(call_timeout) {
    ::signal(SIGPIPE, SIG_IGN);  // a server that died must not take the processor with it
    for (auto& s : servers) {
        if (!s.url.empty())
            servers_.push_back(std::make_shared<McpHttp>(std::move(s), call_timeout));
        else
            servers_.push_back(std::make_shared<McpServer>(std::move(s), call_timeout));
    }
}

McpToolbox::~McpToolbox() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (refresher_.joinable()) refresher_.join();
}

std::vector<std::string> McpToolbox::start() {
    std::vector<std::string> problems;
    for (auto& s : servers_) {
        auto t = s->tools();
        if (!t) problems.push_back(t.error().detail);
    }
    {
        std::lock_guard lk(mu_);
        cached_ = list_all();
    }
    if (!refresher_.joinable())
        refresher_ = std::thread([this] {
            std::unique_lock lk(mu_);
            while (!cv_.wait_for(lk, std::chrono::seconds(1), [&] { return stopping_; })) {
                lk.unlock();
                auto fresh = list_all();  // may wait for a slow server: here, not in a run
                lk.lock();
                cached_ = std::move(fresh);
            }
        });
    return problems;
}

std::vector<Tool> McpToolbox::tools() {
    std::lock_guard lk(mu_);
    return cached_;
}

std::vector<Tool> McpToolbox::list_all() {
    std::vector<Tool> out;
    std::set<std::string> names;  // after sanitising and cutting: a model API refuses a name twice
    for (auto& s : servers_) {
        std::vector<Tool> mine;
        std::set<std::string> mine_names;
        try {
            auto listed = s->tools();
            if (!listed) continue;  // unavailable now: its tools come back when it does
            auto first_time = [&](const std::string& what) {
                std::lock_guard lk(warn_mu_);
                return warned_.size() < 1000 && warned_.insert(s->name() + "/" + what).second;
            };
            auto warn = [&](const std::string& what, const std::string& message) {
                if (first_time(what)) log::get("mcp")->warn("MCP server {}: {}", s->name(), message);
            };
            std::size_t budget = kMaxToolBytesPerServer;
            for (const auto& t : *listed) {
                if (mine.size() >= kMaxToolsPerServer) {
                    warn("too many", "lists " + std::to_string(listed->size()) + " tools: the first " +
                                         std::to_string(kMaxToolsPerServer) + " usable ones are offered");
                    break;
                }
                auto mcp_name = t["name"].get<std::string>();
                const std::size_t schema_bytes = t.contains("inputSchema") ? t["inputSchema"].dump().size() : 0;
                if (schema_bytes > kMaxToolSchema) {
                    warn("schema " + mcp_name.substr(0, 64), "tool " + mcp_name.substr(0, 64) + " has an input schema over " +
                                                                 std::to_string(kMaxToolSchema) + " bytes: not offered");
                    continue;
                }
                Tool tool;
                tool.name = mcp_tool_name(s->name(), mcp_name);
                if (names.count(tool.name) || mine_names.count(tool.name)) {
                    warn("name " + tool.name, "two tools are named " + tool.name + " once made safe: only the first is offered");
                    continue;
                }
                auto desc =
                    t.contains("description") && t["description"].is_string() ? t["description"].get<std::string>() : mcp_name;
                tool.description = "[MCP " + s->name() + "] " + desc.substr(0, 4096);
                // Every tool goes into every model request: what one server adds in all is bounded too.
                const std::size_t cost = schema_bytes + tool.description.size();
                if (cost > budget) {
                    warn("budget", "its tools' descriptions and schemas pass " + std::to_string(kMaxToolBytesPerServer) +
                                       " bytes: the rest are not offered");
                    break;
                }
                budget -= cost;
                json schema = t.contains("inputSchema") && t["inputSchema"].is_object() ? t["inputSchema"] : json::object();
                schema.erase("$schema");
                if (!schema.contains("type")) schema["type"] = "object";
                tool.parameters = std::move(schema);
                std::weak_ptr<McpConnection> weak = s;
                tool.execute = [weak, mcp_name](ToolContext&, const json& args) {
                    auto srv = weak.lock();
                    if (!srv) return ToolResult::error("the MCP server is no longer configured");
                    return srv->call(mcp_name, args);
                };
                mine_names.insert(tool.name);
                mine.push_back(std::move(tool));
            }
        } catch (const std::exception& e) {  // a listing of unexpected shape: that server offers nothing
            log::get("mcp")->warn("MCP server {}: unusable tool list ({})", s->name(), e.what());
            continue;
        }
        names.insert(mine_names.begin(), mine_names.end());
        for (auto& t : mine) out.push_back(std::move(t));
    }
    return out;
}

}  // namespace engram::ai
