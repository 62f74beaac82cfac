#pragma once
// The web chat's live answers: the AI processor publishes the pieces of each model answer on NATS
// core (`engram.deltas.<session>`, ai-processor/src/deltas.h); this hub subscribes to all of them
// once and hands those of a browser's own session to its GET /chat/deltas stream. Nothing is stored
// but, per web session, the pieces of the answer being written (capped), so that a browser that
// (re)connects mid-answer starts from a `snapshot` and continues live.
//
// Caps: a message larger than kMaxMessage is dropped; the answer kept per session is at most
// kMaxKept bytes of text (then `truncated`), and only until its end; at most kMaxSessions answers are
// kept (the oldest go, so at most kMaxKept * kMaxSessions bytes in all);
// each browser stream gets at most kClientBytesPerSecond (bursts of kClientBurst): past it its
// deltas are dropped and, once it has room again, it gets a snapshot instead, so it always converges
// on what the hub has. Thread-safe; NATS callbacks and stream closes may come from any thread.
#include "engram/http/server.h"

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace engram::gateway {

class DeltaHub {
public:
    static constexpr std::size_t kMaxMessage = 64 << 10;
    static constexpr std::size_t kMaxKept = 64 << 10;
    static constexpr std::size_t kMaxSessions = 1024;
    static constexpr double kClientBytesPerSecond = 256 << 10;
    static constexpr double kClientBurst = 512 << 10;
    // A kept answer no message has touched for this long is over (its end was lost).
    static constexpr std::chrono::seconds kStale{120};

    // Connects to `nats_url` in the background (the web chat works without it, only not live).
    // nats_url "" = no hub: streams stay open and quiet.
    explicit DeltaHub(const std::string& nats_url);
    ~DeltaHub();
    DeltaHub(const DeltaHub&) = delete;
    DeltaHub& operator=(const DeltaHub&) = delete;

    // A message as published by the AI processor (exposed for tests: NATS calls this).
    void on_message(const std::string& data);
    // Streams `session`'s pieces into `res` (SSE: `event: snapshot` first when an answer is being
    // written, then `event: delta` for each message); `on_done` runs when the stream ends.
    void open(const std::shared_ptr<http::Responder>& res, const std::string& session, http::Headers extra,
              std::function<void()> on_done);
    std::size_t clients() const;

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace engram::gateway
