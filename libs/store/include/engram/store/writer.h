#pragma once
// The single writer of the log. See README.md ("Group commit") for the design.
#include "engram/store/append.h"

#include <pqxx/connection>

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace spdlog {
class logger;
}
namespace engram::pg {
class Watchdog;
}
namespace engram::metrics {
class Registry;
class Histogram;
class Counter;
}  // namespace engram::metrics

namespace engram::store {

class Writer {
public:
    struct Options {
        std::string database_url;
        std::size_t max_batch_events = 5000;  // events per group commit
        std::size_t max_queue = 100000;       // requests waiting; beyond this appends get 503 at once
        std::chrono::milliseconds reconnect_interval{200};
        // A group commit (or the reconnection's migration and head read) that takes longer is cut:
        // its requests get 503 with an unknown outcome, which a retry with the same ids settles.
        // Covers a frozen or unreachable server and a primary waiting for a synchronous standby.
        std::chrono::milliseconds commit_timeout{10000};
    };
    using Callback = std::function<void(Result<AppendOutcome>)>;
    using CommitListener = std::function<void(const std::vector<events::Event>&)>;

    Writer(Options opts, metrics::Registry& metrics);
    ~Writer();
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    // Called after each commit, from the writer thread, with the new events in position order.
    // Set before start(). Must be fast (hand off, don't do I/O).
    void on_commit(CommitListener l);
    void start();
    void stop();  // fails waiting requests with `unavailable`, joins the thread

    // Queues the request; cb is called exactly once, from the writer thread.
    void submit(AppendRequest req, Callback cb);

    bool database_up() const { return db_up_.load(); }
    GlobalPosition head() const { return GlobalPosition(head_.load()); }

private:
    struct Pending {
        AppendRequest req;
        Callback cb;
        std::chrono::steady_clock::time_point queued;
    };
    void run();
    bool ensure_connection();
    void commit_batch(std::vector<Pending>& batch, std::vector<Result<AppendOutcome>>& results,
                      std::vector<events::Event>& committed);
    bool try_fast_commit(std::vector<AppendRequest*>& reqs, std::vector<Result<AppendOutcome>>& results,
                         std::vector<events::Event>& committed);
    void verified_commit(std::vector<AppendRequest*>& reqs, std::vector<Result<AppendOutcome>>& results,
                         std::vector<events::Event>& committed);
    void forget_cache();
    void remember(const std::vector<events::Event>& committed, std::int64_t last_ts_ms);
    void process(std::vector<Pending>& batch);

    Options opts_;
    std::shared_ptr<spdlog::logger> log_;
    CommitListener listener_;
    std::unique_ptr<pg::Watchdog> watchdog_;  // declared before conn_: guards die before the connection
    std::unique_ptr<pqxx::connection> conn_;
    std::chrono::steady_clock::time_point last_connect_{};
    // Writer-thread only: the submitted event of each event of the group being committed.
    std::vector<events::NewEvent*> sources_;
    // Writer-thread only: what this writer knows of the log (see try_fast_commit).
    bool head_known_ = false;
    std::int64_t head_cache_ = 0;
    std::int64_t last_ts_ms_ = 0;
    std::unordered_map<std::string, std::int64_t> versions_;

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Pending> queue_;
    bool stopping_ = false;
    std::thread thread_;
    std::atomic<bool> db_up_{false};
    std::atomic<std::int64_t> head_{0};

    metrics::Histogram& batch_events_;
    metrics::Histogram& batch_requests_;
    metrics::Histogram& commit_seconds_;
    metrics::Histogram& append_seconds_;
    metrics::Counter& created_;
    metrics::Counter& replayed_;
    metrics::Counter& rejected_;
    metrics::Counter& unavailable_;
    metrics::Counter& events_written_;
};

}  // namespace engram::store
