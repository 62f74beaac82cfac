#pragma once
// engram::processor — the runtime every processor executable is built on: a durable
// JetStream pull consumer, per-aggregate ordered queues served by a bounded worker pool, in-process
// retries with doubling back-off, parking of events that keep failing (table processor_parked,
// retryable), deterministic derived-event appends, and a health/metrics HTTP server.
// See libs/processor/README.md for the threading model and the guarantees.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engram/config/config.h"
#include "engram/core/result.h"
#include "engram/core/strong.h"
#include "engram/events/event.h"
#include "engram/metrics/metrics.h"
#include "engram/pg/pg.h"

namespace engram::processor {

struct Options {
    std::string name;  // durable consumer name and `processor` column, e.g. "memory-processor"
    std::string nats_url = "nats://127.0.0.1:54222";
    std::string database_url;
    std::string event_store_url = "http://127.0.0.1:8080";
    std::string api_token;  // "" = none; else sent as Authorization: Bearer <token> to the store
    std::string stream = "EVENTS";
    // Event types handled ("*" or empty = all). One type: server-side filter "events.<T>"; several:
    // filter "events.>" and the runtime acks and skips the other types (nats-server 2.9 has one
    // filter subject per consumer, and the filter of an existing durable cannot be changed).
    std::vector<std::string> types;
    int concurrency = 8;                           // aggregates handled at once (worker threads)
    int max_attempts = 5;                          // in-process attempts before the event is parked
    std::chrono::milliseconds retry_backoff{200};  // doubles per attempt, capped at max_backoff
    std::string listen = "127.0.0.1:0";            // health/metrics HTTP
    // Without api_token, the health server answers only requests whose Host is a loopback name or
    // one of these (ENGRAM_ALLOWED_HOSTS), so a web page cannot read it through a rebound name.
    std::vector<std::string> allowed_hosts;

    // Tuning (defaults are fine for production; tests shorten them).
    std::chrono::milliseconds max_backoff{30000};
    std::chrono::milliseconds ack_wait{30000};       // renewed with in_progress() every ack_wait/3
    int max_deliver = 20;                            // server deliveries; the last one is parked unhandled (crash-loop guard)
    std::chrono::milliseconds parked_poll{2000};     // retry_requested poll + lag/parked gauges
    std::size_t max_buffered = 512;                  // messages fetched and not yet finished
    std::chrono::milliseconds drain_timeout{30000};  // stop(): wait this long for running handlers
};

// Given to handlers; valid only during the handler call.
class Context {
public:
    struct Impl;
    explicit Context(Impl* impl) : impl_(impl) {}

    const events::Event& event() const;
    int attempt() const;              // 1-based attempt number (for a parked retry: stored attempts + 1)
    std::uint64_t delivered() const;  // JetStream delivery count (1 = first delivery; 0 = parked retry)
    bool retrying_parked() const;     // this run was requested with `engram parked retry`
    bool stopping() const;            // stop() was called: cut long work short (return an Error)

    // Appends a derived event: id = Uuid::v5(cause id, step) (any id in `e` is replaced),
    // metadata.causation_id = cause id, metadata.correlation_id = the cause's correlation_id or its
    // id, metadata.user_id / session_id copied from the cause and metadata.source = processor name,
    // each unless already set. A redelivery re-appends nothing (the store answers 200 with the
    // stored event). Returns the stored position. Errors: code "event_store" (non-2xx answer, the
    // store's error code in extra.error, status in extra.status) or the HTTP client's codes.
    Result<GlobalPosition> append(std::string_view step, events::NewEvent e);
    pg::Pool& db();

private:
    Impl* impl_;
};

// Ok = done (ack). Error = retry with back-off, then park after max_attempts. An exception counts as
// an Error (its what() is the error text).
using Handler = std::function<Status(Context&)>;

class Runtime {
public:
    Runtime(Options opts, Handler handler);
    ~Runtime();  // stop()
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;

    // Migrates processor_parked (under an advisory lock), connects to NATS, ensures the stream,
    // creates/updates the durable pull consumer, starts the fetch thread, the workers, the
    // heartbeat and parked-poll threads and the health server. An error leaves nothing running.
    Status start();
    // Graceful and idempotent: stop fetching, let running handlers finish (up to drain_timeout),
    // ack what finished, nak the rest (redelivered to the next instance; never acked).
    void stop();
    std::uint16_t port() const;  // health server (after start)
    metrics::Registry& metrics();
    const Options& options() const;

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

// The settings every processor shares: NATS_URL, DATABASE_URL, EVENT_STORE_URL, ENGRAM_API_TOKEN,
// ENGRAM_ALLOWED_HOSTS, LOG_LEVEL, LOG_FORMAT, <NAME>_LISTEN, <NAME>_CONCURRENCY, <NAME>_MAX_ATTEMPTS
// (NAME = upper-cased name with '-' -> '_'), defaults taken from `defaults`.
config::Spec config_spec(const Options& defaults);
std::string env_prefix(const std::string& name);  // "memory-processor" -> "MEMORY_PROCESSOR"
// Options from loaded values (the settings above) on top of `defaults`.
Options options_from(const config::Values& v, Options defaults);

// A processor's main(): --help / --env-example, validates the configuration (shared settings plus
// `extra`) and exits 2 with one line on a bad value, refuses a non-loopback listen address without
// ENGRAM_API_TOKEN, builds the handler (an exception from make_handler = exit 2 with its message),
// starts the runtime (exit 1 on failure), blocks SIGTERM/SIGINT and stops gracefully on either.
int run_main(int argc, char** argv, Options defaults, config::Spec extra,
             std::function<Handler(const config::Values&)> make_handler);

}  // namespace engram::processor
