// libFuzzer target for the event-stream parser behind Client::sse (libs/http/src/sse_parser.h).
// The input is the stream; the first byte picks the event size limit and when the callback stops.
// The same bytes are fed once whole and once in pseudo-random splits (derived from the input, so a
// crash reproduces): both must yield the same events and the same outcome, and nothing buffered may
// exceed the limit. Seeds: libs/http/fuzz/corpus/sse_parser/ (also run by a unit test).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "../src/sse_parser.h"

namespace {

using engram::http::detail::SseParser;
using Events = std::vector<std::tuple<std::string, std::string, std::string>>;

struct Run {
    Events events;
    SseParser::Feed outcome = SseParser::Feed::more;
};

void check(bool ok) {
    if (!ok) std::abort();
}

template <class Splitter>
Run parse(std::string_view input, std::size_t limit, std::size_t stop_after, Splitter&& next_len) {
    Run run;
    SseParser parser(
        [&](const std::string& id, const std::string& event, const std::string& data) {
            check(id.size() <= limit && event.size() <= limit && data.size() <= limit);
            check(!event.empty());
            run.events.emplace_back(id, event, data);
            return run.events.size() < stop_after;
        },
        limit);
    while (!input.empty()) {
        auto n = std::min(next_len(), input.size());
        run.outcome = parser.feed(input.substr(0, n));
        input.remove_prefix(n);
        if (run.outcome != SseParser::Feed::more) break;
    }
    return run;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::size_t limits[] = {1, 7, 64, 4096, 1 << 20};
    const std::size_t limit = limits[data[0] % 5];
    const std::size_t stop_after = (data[0] >> 3) == 0 ? 1 : (data[0] >> 3) * 4;  // 1 or 4..124 events
    std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

    Run whole = parse(input, limit, stop_after, [&] { return input.size(); });

    std::uint64_t state = 0x9e3779b97f4a7c15ULL ^ size;  // splitmix64 over the input's own bytes
    for (std::size_t i = 0; i < size; ++i) state = (state ^ data[i]) * 0x100000001b3ULL;
    auto next_len = [&]() -> std::size_t {
        state += 0x9e3779b97f4a7c15ULL;
        std::uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        return (z % 8 == 0) ? 1 + z % 4096 : 1 + z % 5;  // mostly tiny pieces, now and then a big one
    };
    Run split = parse(input, limit, stop_after, next_len);

    check(whole.outcome == split.outcome);
    check(whole.events == split.events);
    if (whole.outcome == SseParser::Feed::stopped) check(whole.events.size() == stop_after);
    return 0;
}
