// The text of a POST /events body, single event or batch, through the store's own parse: it never
// throws, refuses with invalid_json or invalid_event, and every request it accepts is one PostgreSQL
// can store and that parses the same again from its own JSON.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engram/core/json.h"
#include "engram/events/catalog.h"
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
    auto req = events::parse_append_body(std::string_view(reinterpret_cast<const char*>(data), size));
    if (!req) {
        FUZZ_CHECK(req.error().code == "invalid_json" || req.error().code == "invalid_event");
        FUZZ_CHECK(!req.error().detail.empty());
        return 0;
    }
    FUZZ_CHECK(!req->events.empty() && req->events.size() <= events::kMaxBatchEvents);
    FUZZ_CHECK(req->batch || req->events.size() == 1);
    FUZZ_CHECK(events::valid_aggregate_id(req->aggregate_id));
    if (req->expected_version) FUZZ_CHECK(req->expected_version->value() >= 0);
    for (const auto& e : req->events) {
        FUZZ_CHECK(events::valid_type_name(e.type));
        FUZZ_CHECK(e.aggregate_id == req->aggregate_id);
        FUZZ_CHECK(e.data.is_object() && e.metadata.is_object());
        FUZZ_CHECK(!find_nul(e.data) && !find_nul(e.metadata));
        FUZZ_CHECK(!e.id || !e.id->is_nil());
        // The schema check of the store runs on every accepted event: it must answer, not throw.
        auto s = events::Catalog::builtin().validate(e);
        if (!s) FUZZ_CHECK(s.error().code == "schema_violation" && s.error().detail.rfind(e.type + ".data", 0) == 0);
        // What the store writes parses back to the same event.
        auto again = events::parse_new_event(e.to_json());
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(again->type == e.type && again->data == e.data && again->metadata == e.metadata && again->id == e.id);
        // An envelope holding it as stored stays within the limit its readers parse with.
        FUZZ_CHECK(json_depth(e.to_json()) <= kMaxJsonDepth);
    }
    return 0;
}
