#pragma once
// Private: the incremental text/event-stream parser behind Client::sse (WHATWG rules, minus
// `retry`), in its own unit so that libs/http/fuzz/sse_parser_fuzz.cpp can reach it. Not installed.
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace engram::http::detail {

class SseParser {
public:
    // (id, event, data) of each complete event; returning false stops the stream.
    using Callback = std::function<bool(const std::string& id, const std::string& event, const std::string& data)>;
    enum class Feed {
        more,       // everything consumed, ready for the next bytes
        stopped,    // the callback returned false
        too_large,  // a line or an event's data exceeds max_event_bytes (a hostile or broken server)
    };

    // `max_event_bytes` bounds what is buffered: one line, and the joined data of one event.
    SseParser(Callback cb, std::size_t max_event_bytes);

    // Bytes in any split (a frame, a line, even CR LF may be cut anywhere). After `stopped` or
    // `too_large` the parser must not be fed again.
    Feed feed(std::string_view bytes);

    std::size_t max_event_bytes() const { return max_; }

private:
    Feed process_line();

    Callback cb_;
    std::size_t max_;
    std::string line_, last_id_, event_, data_;
    bool has_data_ = false;
    bool after_cr_ = false;   // the last byte was CR: a LF right after it belongs to the same line end
    bool first_line_ = true;  // a UTF-8 byte order mark at the very start is dropped
};

}  // namespace engram::http::detail
