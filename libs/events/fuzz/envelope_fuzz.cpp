// A stored envelope as processors and clients receive it (a JetStream message, an SSE event, a store
// answer): Event::from_json never throws, and what it accepts goes back to the same JSON.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engram/core/json.h"
#include "engram/events/event.h"

#define FUZZ_CHECK(cond)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            std::fprintf(stderr, "property violated: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                                       \
        }                                                                                       \
    } while (0)

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace engram;
    auto j = parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "the message");
    if (!j) return 0;
    auto e = events::Event::from_json(*j);
    if (!e) {
        FUZZ_CHECK(e.error().code == "invalid_event");
        FUZZ_CHECK(!e.error().detail.empty());
        return 0;
    }
    FUZZ_CHECK(events::valid_type_name(e->type));
    FUZZ_CHECK(events::valid_aggregate_id(e->aggregate_id));
    FUZZ_CHECK(e->version.value() >= 1 && e->position.value() >= 1);
    FUZZ_CHECK(e->data.is_object() && e->metadata.is_object());
    auto back = e->to_json();
    auto text = parse_json(back.dump(), "the envelope");
    FUZZ_CHECK(text.ok());
    auto again = events::Event::from_json(*text);
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(again->to_json() == back);
    FUZZ_CHECK(again->id == e->id && again->timestamp == e->timestamp);
    return 0;
}
