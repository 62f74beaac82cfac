// The schema validator on any JSON: as the `data` of every catalog type (what the store checks on each
// append), and as a schema of its own (check_schema, then validate_schema of the value against
// itself), since the validator recurses along the schema. It answers, never throws or overflows.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engram/core/json.h"
#include "engram/events/catalog.h"
#include "engram/events/schema.h"

#define FUZZ_CHECK(cond)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            std::fprintf(stderr, "property violated: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                                       \
        }                                                                                       \
    } while (0)

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace engram;
    auto v = parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "the data");
    if (!v) return 0;
    const auto& catalog = events::Catalog::builtin();
    for (const auto& entry : catalog.entries()) {
        auto s = catalog.validate(entry.type, *v);
        if (!s) {
            FUZZ_CHECK(s.error().code == "schema_violation");
            FUZZ_CHECK(s.error().detail.rfind(entry.type + ".data", 0) == 0);
        }
    }
    // Unknown types are the store's general-purpose case: always accepted.
    FUZZ_CHECK(catalog.validate("NotInTheCatalog", *v).ok());
    auto checked = events::check_schema(*v);
    if (!checked) FUZZ_CHECK(checked.error().code == "invalid_schema");
    auto self = events::validate_schema(*v, *v, "value");
    if (!self) FUZZ_CHECK(self.error().detail.rfind("value", 0) == 0);
    return 0;
}
