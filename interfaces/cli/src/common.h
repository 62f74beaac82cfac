#pragma once
// Shared pieces of the `engram` CLI: global options, the failure model (one line, exit code), the
// event store client, tables and the progress bar.
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "engram/events/event.h"
#include "engram/http/client.h"
#include "engram/projections/fork.h"

namespace CLI {
class App;
}

namespace engram::cli {

// Exit codes: 0 success, 1 failure, 2 bad arguments.
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Thrown by commands; main prints "engram: <what()>" on ONE line and exits with `code`.
struct Failure : std::runtime_error {
    int code;
    Failure(int c, const std::string& msg) : std::runtime_error(msg), code(c) {}
};
[[noreturn]] void fail(const std::string& msg);   // exit 1
[[noreturn]] void usage(const std::string& msg);  // exit 2

// Collapses whitespace runs (newlines included) into single spaces and trims.
std::string one_line(std::string_view s);

struct Globals {
    std::string url = "http://127.0.0.1:8080";
    std::string token;
    std::string database_url;
    bool json = false;
    bool progress = false;  // force the progress bar even when stderr is not a terminal
};

// The event store over HTTP. Every failure becomes a Failure with a one-line reason.
class Store {
public:
    explicit Store(const Globals& g);
    // GET; returns the parsed body for 2xx, throws Failure otherwise. With allow_404, a 404 returns
    // nullopt instead.
    std::optional<nlohmann::json> get(const std::string& path_and_query, bool allow_404 = false);
    // POST a JSON body; returns {status, body} for 2xx, throws Failure otherwise.
    nlohmann::json post(const std::string& path, const nlohmann::json& body, int* status = nullptr);
    const std::string& url() const { return url_; }

    // Pages GET /events with the given filters (query without after/limit), calling fn(event) in
    // position order; stops when fn returns false or the log is exhausted. Returns the last position seen
    // (or `after` when none).
    template <class F>
    std::int64_t page_events(std::int64_t after, const std::string& filters, F&& fn, int page_size = 1000);

private:
    [[noreturn]] void http_failure(const http::ClientResponse& r);
    [[noreturn]] void transport_failure(const Error& e);
    std::string url_;
    http::Client client_;
};

events::Event parse_event(const nlohmann::json& j);

// Reads sessions from the store a page at a time: a fork's origins (engram/projections/fork.h).
projections::SessionReader session_reader(Store& store);

// Appends "&name=value" (url-encoded) when value is non-empty.
void add_param(std::string& q, std::string_view name, std::string_view value);

// A plain text table: columns sized to their widest cell.
class Table {
public:
    explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
    void row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
    void print(std::FILE* out) const;
    std::size_t size() const { return rows_.size(); }

private:
    std::vector<std::string> header_;
    std::vector<std::vector<std::string>> rows_;
};

// Truncates to `max` code points (UTF-8 aware), adding "…".
std::string truncate(std::string_view s, std::size_t max);

// "done/total" progress bar on stderr, redrawn at most every 100 ms; disabled when stderr is not a
// terminal (unless forced).
class Progress {
public:
    Progress(std::string label, std::int64_t total, bool enabled);
    ~Progress();
    void update(std::int64_t done);
    void set_total(std::int64_t total) { total_ = total; }
    void finish();

private:
    void draw();
    std::string label_;
    std::int64_t total_;
    std::int64_t done_ = 0;
    bool enabled_;
    bool finished_ = false;
    std::int64_t last_draw_ms_ = 0;
};
bool stderr_is_tty();

// Command registration (each adds its subcommands to `app`; the action runs after parsing).
using Action = std::function<int()>;
void add_events_commands(CLI::App& app, Globals& g, Action& action);
void add_projection_commands(CLI::App& app, Globals& g, Action& action);
void add_parked_commands(CLI::App& app, Globals& g, Action& action);
void add_processor_commands(CLI::App& app, Globals& g, Action& action);
void add_fork_commands(CLI::App& app, Globals& g, Action& action);

// One event as a table row / a one-line summary.
std::string short_json(const nlohmann::json& j, std::size_t max);

template <class F>
std::int64_t Store::page_events(std::int64_t after, const std::string& filters, F&& fn, int page_size) {
    for (;;) {
        auto body = get("/events?after=" + std::to_string(after) + "&limit=" + std::to_string(page_size) + filters);
        const auto& evs = (*body)["events"];
        if (!evs.is_array()) fail("unexpected answer from the event store: no events array");
        for (const auto& j : evs) {
            after = j.value("position", after);
            if (!fn(j)) return after;
        }
        if (evs.size() < static_cast<std::size_t>(page_size)) return after;
    }
}

}  // namespace engram::cli
