#pragma once
// engram::processor — the runtime every processor executable is built on. N instances of one
// processor share its work: the stream is cut into partitions (by aggregate), each partition is
// leased to one live instance (rows in PostgreSQL, fenced by an epoch), read by a cursor of its own
// from its checkpoint, and handled by per-aggregate FIFO queues on a shared worker pool. Transient
// failures are retried without limit; deterministic ones are parked (table processor_parked).
// See libs/processor/README.md for the protocol, the threading model, every failure case and the
// bounds.
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
    std::string name;  // `processor` column of the runtime's tables, e.g. "memory-processor"
    std::string nats_url = "nats://127.0.0.1:54222";
    std::string database_url;
    std::string event_store_url = "http://127.0.0.1:8080";
    std::string api_token;  // "" = none; else sent as Authorization: Bearer <token> to the store
    std::string stream = "EVENTS";
    // Event types handled ("*" or empty = all). One type: each partition's cursor filters
    // "events.<T>.<p>" on the server; several: "events.*.<p>" and other types are skipped by their
    // subject, without parsing the body.
    std::vector<std::string> types;
    int concurrency = 8;                           // aggregates handled at once (worker threads)
    int max_attempts = 5;                          // attempts of a deterministic failure before the event is parked
    std::chrono::milliseconds retry_backoff{200};  // doubles per attempt, capped at max_backoff
    std::string listen = "127.0.0.1:0";            // health/metrics HTTP
    // Without api_token, the health server answers only requests whose Host is a loopback name or
    // one of these (ENGRAM_ALLOWED_HOSTS), so a web page cannot read it through a rebound name.
    std::vector<std::string> allowed_hosts;
    // Partitions of the stream (ENGRAM_PARTITIONS). Recorded in the table engram_settings by the
    // first service that starts; a different value is refused at start.
    int partitions = 16;

    // Tuning (defaults are fine for production; tests shorten them).
    std::chrono::milliseconds max_backoff{5000};  // transient failures retry forever at most this far apart
    // A lease not renewed for lease_ttl is free to take: an instance killed with -9 loses its share
    // after at most lease_ttl + tick (the takeover bound). Renewed every tick.
    std::chrono::milliseconds lease_ttl{6000};
    std::chrono::milliseconds tick{1000};  // membership heartbeat, assignment, renewals, checkpoints (run_main: lease_ttl / 6)
    std::chrono::milliseconds parked_poll{2000};        // retry_requested poll + gauges
    std::size_t max_loaded_per_partition = 256;         // bodies held per partition; beyond: sequence only, re-read
    std::size_t max_loaded_per_aggregate = 16;          // bodies held per aggregate (the rest: sequence only)
    std::size_t max_batch = 16;                         // events per BatchHandler call at most
    std::size_t max_unfinished_per_partition = 100000;  // sequences held; beyond, that partition's cursor pauses
    std::chrono::milliseconds drain_timeout{30000};     // stop() / hand-over: wait this long for running handlers
    std::chrono::milliseconds handler_timeout{300000};  // a handler's deadline (Context::stopping() turns true)
};

// Given to handlers; valid only during the handler call.
class Context {
public:
    struct Impl;
    explicit Context(Impl* impl) : impl_(impl) {}

    const events::Event& event() const;
    int partition() const;
    int attempt() const;           // 1-based attempt number (for a parked retry: stored attempts + 1)
    bool retrying_parked() const;  // this run was requested with `engram parked retry`
    // True when the handler should cut its work short and return an Error: the process is
    // stopping, the partition is being handed over or its lease is lost, or the deadline passed.
    bool stopping() const;
    // This instance still holds the lease of the event's partition, as far as it knows locally
    // (renewed within lease_ttl minus a safety margin, not handed over, not lost). A frozen process
    // that wakes up finds it false before anyone else could have claimed the partition.
    bool owns() const;
    std::chrono::steady_clock::time_point deadline() const;

    // Fences a handler's own transaction: Error{code "fenced"} unless this instance still holds the
    // partition's lease with the epoch it claimed (checked in the database, in `tx`). The lease row
    // stays share-locked until `tx` ends, so a takeover waits for this commit and every later
    // commit of the old owner fails. Call it in every transaction whose effect must happen once.
    Status fence(pqxx::transaction_base& tx);

    // Appends a derived event: id = Uuid::v5(cause id, step) (any id in `e` is replaced),
    // metadata.causation_id = cause id, metadata.correlation_id = the cause's correlation_id or its
    // id, metadata.user_id / session_id copied from the cause and metadata.source = processor name,
    // each unless already set. A redelivery re-appends nothing (the store answers 200 with the
    // stored event). Returns the stored position. Errors: "fenced" (owns() is false: nothing sent),
    // "event_store" (non-2xx answer, the store's error code in extra.error, status in extra.status)
    // or the HTTP client's codes.
    Result<GlobalPosition> append(std::string_view step, events::NewEvent e);
    pg::Pool& db();

private:
    Impl* impl_;
};

// Ok = done. Error = transient (is_transient: retried without limit, with back-off capped at
// max_backoff) or deterministic (retried max_attempts times, then parked). An exception is a
// deterministic Error (its what() is the error text). "fenced" / "stopping" errors end the attempt
// without counting it: the event is handled again by whoever owns the partition next.
using Handler = std::function<Status(Context&)>;

// Optional: several consecutive events of one aggregate, in stream order, each with its own
// Context (up to Options::max_batch, those already in memory), so a handler can fold them and
// commit once. Ok = all of them done. An Error = none counted done: the runtime handles them one by
// one with the Handler (which retries, classifies and parks per event), so a batch handler must be
// idempotent per event like any handler.
using BatchHandler = std::function<Status(const std::vector<Context*>& batch)>;
struct Handlers {
    Handler one;
    BatchHandler batch;  // may be empty
};

// Unavailable dependencies: codes "unavailable", "database", "nats", "connect", "io", "timeout",
// "cancelled", "llm_unreachable", "llm_rate_limited"; "event_store" / "embeddings" with
// extra.status 0, 429 or >= 500; or any Error with extra.transient == true.
bool is_transient(const Error& e);
// Marks an error transient (extra.transient = true).
Error transient(Error e);

class Runtime {
public:
    Runtime(Options opts, Handler handler, BatchHandler batch = nullptr);
    ~Runtime();  // stop()
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;

    // Migrates the runtime's tables (under an advisory lock), checks the partition count, connects
    // to NATS, joins the group and starts the threads and the health server (the stream is the
    // store's to create: cursors retry until it exists).
    // An error leaves nothing running.
    Status start();
    // Graceful and idempotent: stop fetching, let running handlers finish (up to drain_timeout),
    // commit the checkpoints, release the leases (another instance takes them at once), leave.
    void stop();
    std::uint16_t port() const;  // health server (after start)
    metrics::Registry& metrics();
    const Options& options() const;
    std::string member_id() const;
    std::vector<int> owned_partitions() const;

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

// Creates the runtime's tables if missing (engram_settings, processor_members, processor_leases,
// processor_parked; under a transaction advisory lock) and records `partitions` in engram_settings
// unless a value is there already. Error "invalid_config" when the recorded count differs (the
// partition of every aggregate would change), "database" when PostgreSQL cannot be reached.
// Also used by the event store and the CLI.
Status migrate(const std::string& database_url, int partitions);

// The settings every processor shares: NATS_URL, DATABASE_URL, EVENT_STORE_URL, ENGRAM_API_TOKEN,
// ENGRAM_ALLOWED_HOSTS, ENGRAM_PARTITIONS, LOG_LEVEL, LOG_FORMAT, <NAME>_LISTEN, <NAME>_CONCURRENCY,
// <NAME>_MAX_ATTEMPTS, <NAME>_LEASE_TTL_MS, <NAME>_HANDLER_TIMEOUT_MS, <NAME>_DRAIN_TIMEOUT_MS (NAME = upper-cased name with
// '-' -> '_'), defaults taken from `defaults`.
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
// The same for a processor with a batch handler.
int run_main_batched(int argc, char** argv, Options defaults, config::Spec extra,
                     std::function<Handlers(const config::Values&)> make_handlers);

}  // namespace engram::processor
