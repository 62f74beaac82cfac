#include "sse_parser.h"

#include <algorithm>
#include <utility>

namespace engram::http::detail {

SseParser::SseParser(Callback cb, std::size_t max_event_bytes) : cb_(std::move(cb)), max_(max_event_bytes) {}

SseParser::Feed SseParser::feed(std::string_view bytes) {
    std::size_t i = 0;
    const std::size_t n = bytes.size();
    while (i < n) {
        if (after_cr_) {
            after_cr_ = false;
            if (bytes[i] == '\n') {
                ++i;
                continue;
            }
        }
        // Lines end with CR LF, LF or a lone CR.
        auto end = std::find_if(bytes.begin() + static_cast<std::ptrdiff_t>(i), bytes.end(),
                                [](char c) { return c == '\n' || c == '\r'; });
        auto at = static_cast<std::size_t>(end - bytes.begin());
        if (line_.size() + (at - i) > max_) return Feed::too_large;
        line_.append(bytes.data() + i, at - i);
        if (at == n) break;  // the line goes on in the next bytes
        after_cr_ = bytes[at] == '\r';
        i = at + 1;
        auto step = process_line();
        line_.clear();
        if (step != Feed::more) return step;
    }
    return Feed::more;
}

SseParser::Feed SseParser::process_line() {
    if (first_line_) {
        first_line_ = false;
        if (line_.rfind("\xEF\xBB\xBF", 0) == 0) line_.erase(0, 3);
    }
    if (line_.empty()) {  // a blank line dispatches the event
        if (!has_data_) {
            event_.clear();
            return Feed::more;
        }
        std::string event = event_.empty() ? std::string("message") : std::move(event_);
        bool go_on = cb_(last_id_, event, data_);
        event_.clear();
        data_.clear();
        has_data_ = false;
        return go_on ? Feed::more : Feed::stopped;
    }
    if (line_.front() == ':') return Feed::more;  // comment / keep-alive
    auto colon = line_.find(':');
    std::string_view field(line_.data(), std::min(colon, line_.size()));
    std::string_view value;
    if (colon != std::string::npos) {
        value = std::string_view(line_).substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    }
    if (field == "data") {
        if (data_.size() + (has_data_ ? 1 : 0) + value.size() > max_) return Feed::too_large;
        if (has_data_) data_.push_back('\n');
        data_ += value;
        has_data_ = true;
    } else if (field == "event") {
        event_ = std::string(value);
    } else if (field == "id") {
        if (value.find('\0') == std::string_view::npos) last_id_ = std::string(value);
    }
    return Feed::more;
}

}  // namespace engram::http::detail
