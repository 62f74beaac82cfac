#pragma once
// engram::nats — a small C++ face over NATS.c (core request/reply and JetStream) returning
// engram::Result / Status instead of natsStatus. Every failure is Error{code = "nats",
// detail = "<what>: <NATS.c status text>[: <NATS.c last error / JetStream error text>]"} with
// extra {"status": <natsStatus>, "js_error_code": <jsErrCode>} (when non-zero).
//
// Threading: a Connection is thread-safe. Callbacks (publish acks, subscription handlers) run on
// NATS.c threads: publish acks on the connection's one async-reply dispatcher thread, each
// Subscription's handler on that subscription's own dispatcher thread (one message at a time).
// Callbacks must not block for long, and must not destroy the Connection they come from.
// Destroy Subscriptions, PullConsumers and InMessages before their Connection.
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/result.h"

namespace engram::nats {

using Headers = std::map<std::string, std::string>;

struct Message {
    std::string subject;
    std::string data;
    Headers headers;                // one value per key (the first when a key repeats)
    std::string reply;              // reply subject of a core message ("" when none)
    std::uint64_t stream_seq = 0;   // JetStream stream sequence (0 for core messages)
    std::uint64_t delivered = 0;    // JetStream delivery count: 1 on first delivery
    std::uint64_t pending = 0;      // JetStream: messages left for the consumer after this one
    std::int64_t timestamp_ns = 0;  // JetStream store time (UTC ns since epoch), 0 when unknown
};

// The outcome of one JetStream publish.
struct PubAck {
    bool ok = false;
    std::string error;      // when !ok: NATS.c status text / JetStream error description
    int js_error_code = 0;  // when !ok and the server answered with a JetStream error
    bool timeout = false;   // when !ok: no ack within ConnectOptions::publish_ack_timeout
                            // (the message may or may not be stored: republish with the
                            //  same msg id, the stream's duplicate window drops a copy)
    std::string stream;
    std::uint64_t stream_seq = 0;  // when ok: sequence of the stored message (of the original
                                   // when duplicate)
    bool duplicate = false;        // when ok: the msg id was already in the duplicate window
};
using AckCallback = std::function<void(const PubAck&)>;

// Per-publish JetStream options.
struct PublishOptions {
    std::string msg_id;  // Nats-Msg-Id: de-duplication within the stream's window
    // Optimistic ordering checks done by the server (a mismatch is a JetStream error, code 10070
    // for the msg id, 10071 for the sequence). The duplicate check runs first, so republishing
    // an already stored message with the same expectation still gets a `duplicate` ack.
    std::string expected_last_msg_id;     // the stream's last message must have this Nats-Msg-Id
    std::uint64_t expected_last_seq = 0;  // the stream's last sequence must be this (0 = no check)
    Headers headers;
};

struct ConnectOptions {
    std::string url = "nats://127.0.0.1:4222";  // comma-separated list allowed
    std::string name;                           // client name shown by the server
    std::chrono::milliseconds timeout{2000};    // connect timeout and JetStream API request wait
    // true: connect() succeeds even when no server answers yet; the library keeps trying in the
    // background (connected() tells). false: connect() fails when no server answers.
    // Either way, once connected, a lost connection is retried forever.
    bool retry_on_failed_connect = true;
    std::chrono::milliseconds reconnect_wait{250};
    int reconnect_buffer_bytes = 8 * 1024 * 1024;  // publishes buffered while reconnecting
    // Async publish window: at most this many publishes awaiting their ack; publish_async blocks
    // up to `publish_stall_wait` for room, then fails.
    int max_pending_acks = 4000;
    std::chrono::milliseconds publish_stall_wait{5000};
    // How long an async or sync publish waits for its JetStream ack before reporting a timeout.
    std::chrono::milliseconds publish_ack_timeout{5000};
};

struct StreamConfig {
    std::string name;
    std::vector<std::string> subjects;
    bool memory_storage = false;                         // default: file storage
    std::chrono::milliseconds duplicate_window{120000};  // Nats-Msg-Id de-duplication window
    std::chrono::milliseconds max_age{0};                // 0 = keep forever
    std::int64_t max_msgs = -1;                          // -1 = unlimited
    std::int64_t max_bytes = -1;
    int replicas = 1;  // copies in a JetStream cluster (1, 3 or 5); a single server takes only 1
};

struct StreamInfo {
    std::string name;
    std::vector<std::string> subjects;
    std::uint64_t messages = 0;
    std::uint64_t bytes = 0;
    std::uint64_t first_seq = 0;
    std::uint64_t last_seq = 0;
    std::int64_t consumers = 0;
    std::chrono::milliseconds duplicate_window{0};
    int replicas = 1;
    std::string leader;  // server name of the stream's leader in a cluster ("" for a single server)
};

struct ConsumerInfo {
    std::string stream;
    std::string name;
    std::string filter_subject;
    std::uint64_t num_pending = 0;     // not yet delivered
    std::int64_t num_ack_pending = 0;  // delivered, not yet acked
    std::int64_t num_redelivered = 0;
    std::uint64_t delivered_stream_seq = 0;
    std::uint64_t ack_floor_stream_seq = 0;
};

// Answers one request (a core message with a reply subject).
class Replier {
public:
    Replier(void* connection, std::string reply_subject);
    bool can_reply() const { return !reply_.empty(); }
    bool replied() const { return replied_; }
    Status reply(std::string_view data, const Headers& headers = {});

private:
    void* nc_;
    std::string reply_;
    bool replied_ = false;
};

using Handler = std::function<void(const Message&, Replier&)>;

// A core NATS subscription; unsubscribes in the destructor and, unless destroyed from inside its
// own handler, waits until a handler call in progress has returned.
class Subscription {
public:
    struct State;
    explicit Subscription(State* state);
    ~Subscription();
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;

private:
    State* state_;
};

class Connection {
public:
    static Result<std::unique_ptr<Connection>> connect(const ConnectOptions& options);
    ~Connection();  // closes; publish acks still outstanding are not reported any more
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    bool connected() const;
    const ConnectOptions& options() const { return options_; }
    // The largest message (headers + body) the server accepts, from its INFO (nats-server's
    // `max_payload`, 1 MiB by default); 0 until the first connection succeeded.
    std::int64_t max_payload() const;

    // --- JetStream streams -------------------------------------------------------------------
    // Creates the stream if missing (file storage, limits retention); an existing stream is left
    // as it is (a warning is logged when its subjects or replica count differ).
    Status ensure_stream(const std::string& name, const std::vector<std::string>& subjects);
    Status ensure_stream(const StreamConfig& config);
    Result<StreamInfo> stream_info(const std::string& name);
    Status delete_stream(const std::string& name);
    // Messages with stream sequence >= from_seq, at most `max`, in sequence order (deleted
    // sequences skipped). One JetStream API request per message: for tests and tools.
    Result<std::vector<Message>> get_stream_messages(const std::string& stream, std::uint64_t from_seq, std::size_t max);
    // The message at exactly `seq`; error code "not_found" when it does not exist (deleted, purged).
    Result<Message> get_stream_message(const std::string& stream, std::uint64_t seq);

    // --- JetStream publishing ----------------------------------------------------------------
    // Sends without waiting for the ack; `on_ack` (optional) is called exactly once per message
    // whose publish_async returned ok — with the ack, a JetStream error, or a timeout after
    // publish_ack_timeout — on the connection's async-reply thread, in the order acks arrive
    // (publish order for one stream, except timeouts). No call happens after ~Connection.
    // msg_id (non-empty) becomes the Nats-Msg-Id header: the stream drops a second message with
    // the same id within its duplicate window. Blocks up to publish_stall_wait while
    // max_pending_acks publishes are outstanding. While disconnected, messages are buffered (up
    // to reconnect_buffer_bytes) and sent on reconnect; a full buffer or closed connection is
    // an error here (and then on_ack is not called).
    Status publish_async(const std::string& subject, std::string_view data, const std::string& msg_id,
                         AckCallback on_ack = nullptr, const Headers& headers = {});
    Status publish_async(const std::string& subject, std::string_view data, const PublishOptions& options,
                         AckCallback on_ack = nullptr);
    // Waits until every outstanding async publish has been acked (or failed/timed out).
    Status wait_publish_complete(std::chrono::milliseconds timeout);
    // Async publishes whose ack (or failure) has not been reported yet.
    std::size_t publish_pending() const;
    // Publishes and waits for the JetStream ack (up to publish_ack_timeout).
    Result<PubAck> publish_sync(const std::string& subject, std::string_view data, const std::string& msg_id,
                                const Headers& headers = {});
    Result<PubAck> publish_sync(const std::string& subject, std::string_view data, const PublishOptions& options);

    // --- core NATS ---------------------------------------------------------------------------
    Status publish(const std::string& subject, std::string_view data, const Headers& headers = {});
    // Request/reply; no responder = error "no responders available for request".
    Result<Message> request(const std::string& subject, std::string_view data, std::chrono::milliseconds timeout,
                            const Headers& headers = {});
    // queue_group "" = plain subscription (every subscriber gets every message); otherwise each
    // message goes to one member of the group. Exceptions from the handler are logged and
    // swallowed.
    Result<std::unique_ptr<Subscription>> subscribe(const std::string& subject, const std::string& queue_group, Handler handler);
    Status flush(std::chrono::milliseconds timeout);

    // For PullConsumer / InMessage (the NATS.c handles, opaque here).
    void* native_connection() const { return nc_; }
    void* native_jetstream() const { return js_; }

private:
    Connection() = default;

    ConnectOptions options_;
    void* nc_ = nullptr;  // natsConnection*
    void* js_ = nullptr;  // jsCtx*
    std::uint64_t pub_state_id_ = 0;
};

// A JetStream message received from a PullConsumer. ack/nak/in_progress/term tell the server
// what happened to it; dropping it without any of them lets the server redeliver it after
// ack_wait. Any thread may ack; not two threads for the same message.
class InMessage {
public:
    InMessage(void* native_msg, Message msg, std::chrono::milliseconds wait);
    ~InMessage();
    InMessage(const InMessage&) = delete;
    InMessage& operator=(const InMessage&) = delete;

    const Message& msg() const { return msg_; }
    Status ack();       // fire-and-forget ack
    Status ack_sync();  // waits for the server's confirmation
    // Redeliver (after `delay`, 0 = now / the consumer's back-off).
    Status nak(std::chrono::milliseconds delay = std::chrono::milliseconds(0));
    Status in_progress();  // resets the ack_wait timer
    Status term();         // never redeliver

private:
    void* m_;  // natsMsg*
    Message msg_;
    std::chrono::milliseconds wait_;
};

// A durable pull consumer with explicit acks.
//
// nats-server 2.9 supports one FilterSubject per consumer. filter_subjects with one entry is that
// server-side filter; empty = the whole stream; several entries = no server-side filter and the
// consumer acks and skips (never returns) messages matching none of them, using NATS wildcard
// rules (`*` one token, `>` the rest). Prefer one subject such as "events.>" or
// "events.MessageReceived" when the set is large.
struct ConsumerOptions {
    std::string stream;
    std::string durable;  // letters, digits, '-', '_' (no '.', '*', '>', spaces)
    std::vector<std::string> filter_subjects;
    int max_deliver = 10;  // deliveries before the server gives up (-1 = unlimited)
    std::chrono::milliseconds ack_wait{30000};
    // Redelivery delays after a missed ack_wait (server applies backoff[i] for the i-th
    // redelivery, the last one repeating; when set it replaces ack_wait). Needs
    // max_deliver > backoff.size().
    std::vector<std::chrono::milliseconds> backoff;
    std::int64_t max_ack_pending = 0;  // 0 = server default (1000 in 2.9)
};

class PullConsumer {
public:
    // Creates the durable consumer if missing, updates ack_wait/max_deliver/backoff/max_ack_pending
    // of an existing one; a changed filter is an error (nats-server 2.9 cannot update it: delete
    // the consumer to change it).
    static Result<std::unique_ptr<PullConsumer>> create(Connection& connection, const ConsumerOptions& options);
    ~PullConsumer();
    PullConsumer(const PullConsumer&) = delete;
    PullConsumer& operator=(const PullConsumer&) = delete;

    // Up to `batch` messages, waiting up to `timeout` for the first; nothing = empty vector.
    // One fetch at a time per consumer.
    Result<std::vector<std::unique_ptr<InMessage>>> fetch(int batch, std::chrono::milliseconds timeout);
    Result<ConsumerInfo> info();
    const ConsumerOptions& options() const { return options_; }

private:
    PullConsumer() = default;

    Connection* conn_ = nullptr;
    ConsumerOptions options_;
    bool client_filter_ = false;
    void* sub_ = nullptr;  // natsSubscription*
};

// A cursor over one filtered slice of a stream, owned by one reader: an ephemeral pull consumer
// (no acks, state in memory, deleted on close or after `inactive_threshold` without a fetch)
// that delivers every message matching `filter` from `start_seq` on, in stream order. Where the
// reader keeps its progress (a checkpoint in a database) is its own business: a crash loses
// nothing, the next reader opens a new cursor at the checkpoint. Deliveries lost on the way
// (a reconnect, a fetch answer dropped) show up as a gap in the consumer sequence: fetch() then
// fails with code "cursor_gap" and the reader reopens at next_seq(). The consumer's configuration
// is read back after creation: a server that ignored part of it (older servers drop settings they
// do not know) is an error "cursor_config", never a silently different cursor.
struct CursorOptions {
    std::string stream;
    std::string filter;  // one subject (wildcards allowed)
    std::uint64_t start_seq = 1;
    std::chrono::milliseconds inactive_threshold{30000};
};

class Cursor {
public:
    static Result<std::unique_ptr<Cursor>> open(Connection& connection, const CursorOptions& options);
    ~Cursor();  // deletes the consumer (best effort; the server drops it anyway when inactive)
    Cursor(const Cursor&) = delete;
    Cursor& operator=(const Cursor&) = delete;

    // Up to `batch` messages in stream order, waiting up to `timeout` for the first.
    Result<std::vector<Message>> fetch(int batch, std::chrono::milliseconds timeout);
    // Whether the server still has the consumer: a server restart (or an inactive_threshold
    // passed) drops it silently, after which fetch() only ever times out. Error "cursor_gone"
    // then (reopen at next_seq()). Call it while idle: a consumer that delivered more than arrived
    // lost the rest on the way (a cluster node died with the pull's reply route) and no later
    // delivery may come to show it: error "cursor_gap". A consumer whose server died (one replica,
    // placed on it) only times out: error "cursor_unreachable". Any error means: reopen.
    Status check();
    // The server holding the consumer (its leader), e.g. for diagnostics.
    Result<std::string> server();
    std::uint64_t next_seq() const { return next_seq_; }  // first stream sequence not yet returned
    // Messages matching the filter after the last one returned (from the last fetch's metadata).
    std::uint64_t pending() const { return pending_; }
    const CursorOptions& options() const { return options_; }
    const std::string& name() const { return name_; }

private:
    Cursor() = default;
    Connection* conn_ = nullptr;
    CursorOptions options_;
    std::string name_;
    void* sub_ = nullptr;  // natsSubscription*
    std::uint64_t next_seq_ = 1;
    std::uint64_t consumer_seq_ = 0;  // last consumer sequence returned
    std::uint64_t pending_ = 0;
};

// The servers of a NATS_URL: "nats://a:4222,nats://b:4222" -> each URL, trimmed, empty entries
// dropped. Credentials (user:pass@ or token@) given on one URL only are applied to the others
// (a cluster shares its authorization). NATS.c's own URL option does not connect with a list.
std::vector<std::string> server_urls(const std::string& url);

// NATS subject matching: `*` matches one token, `>` (last token) one or more.
bool subject_matches(std::string_view pattern, std::string_view subject);

}  // namespace engram::nats
