#pragma once
// Live pieces of a model call's answer, for the web chat to show it being written: published on NATS
// core (`engram.deltas.<session>`), never stored, lost when nobody listens. The log alone is the
// truth; these only run ahead of it.
//
// One message (JSON) per flush: {"session_id", "run_id", "iteration", "seq" (from 1 per call),
// "content" (text appended since the last message), "tool_calls": [{"index", "id"?, "name"?,
// "arguments" (appended)}], "restart" (the pieces so far are taken back: a retry), "end" (the call
// is over), "truncated" (the preview stopped: more than max_preview bytes)}.
//
// Coalesced so that a fast model cannot flood the bus or the browsers: at most one message per
// `interval` per call, each at most `max_message` bytes of text; past `max_preview` bytes in one call
// nothing more is published but the end.
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "engram/llm/llm.h"

namespace engram::ai {

struct DeltaOptions {
    std::chrono::milliseconds interval{50};
    std::size_t max_message = 4096;
    std::size_t max_preview = 256 << 10;
};

// "engram.deltas.<session>" with every character outside [A-Za-z0-9_-] as '_' (the message's
// session_id is the exact one).
std::string delta_subject(const std::string& session);

using PublishFn = std::function<void(const std::string& subject, const std::string& data)>;

// One model call's pieces. sink() goes into llm::Request::on_delta; a thread of its own flushes
// every `interval`, so text that arrives before a pause is not held back. end() (or the destructor)
// flushes what is left and publishes the end.
class DeltaCall {
public:
    DeltaCall(PublishFn publish, DeltaOptions o, std::string session, std::string run_id, int iteration);
    ~DeltaCall();
    DeltaCall(const DeltaCall&) = delete;
    DeltaCall& operator=(const DeltaCall&) = delete;

    llm::DeltaSink sink();
    void end();

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

// Opens a DeltaCall per model call and points `req.on_delta` at it; null (and req untouched) when
// `publish` is empty.
std::unique_ptr<DeltaCall> open_deltas(const PublishFn& publish, const DeltaOptions& o, const std::string& session,
                                       const std::string& run_id, int iteration, llm::Request& req);

}  // namespace engram::ai
