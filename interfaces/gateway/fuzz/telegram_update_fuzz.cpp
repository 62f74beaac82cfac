// A Telegram update as getUpdates or the webhook delivers it, through map_update: it never throws,
// maps the same update to the same event every time, and every event it makes is one the store
// accepts (envelope, the catalog's schema, no U+0000), so no update is dropped by a store refusal.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engram/core/json.h"
#include "engram/events/catalog.h"
#include "engram/events/event.h"
#include "telegram_map.h"

#define FUZZ_CHECK(cond)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            std::fprintf(stderr, "property violated: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                                       \
        }                                                                                       \
    } while (0)

namespace {

void check(const nlohmann::json& update, const engram::gateway::telegram::Settings& s) {
    using namespace engram;
    using gateway::telegram::Mapped;
    auto m = gateway::telegram::map_update(update, s);
    auto again = gateway::telegram::map_update(update, s);
    FUZZ_CHECK(again.kind == m.kind && again.event == m.event && again.chat_id == m.chat_id);
    if (m.kind == Mapped::Kind::ignored) {
        FUZZ_CHECK(!m.why.empty());
        return;
    }
    FUZZ_CHECK(!m.chat_id.empty());
    auto parsed = events::parse_append_request(m.event);
    if (!parsed) std::fprintf(stderr, "refused: %s\n", parsed.error().detail.c_str());
    FUZZ_CHECK(parsed.ok());
    FUZZ_CHECK(parsed->events.size() == 1 && parsed->events[0].id);
    const auto& e = parsed->events[0];
    FUZZ_CHECK(e.type == (m.kind == Mapped::Kind::message ? "MessageReceived" : "AccessDenied"));
    auto valid = events::Catalog::builtin().validate(e);
    if (!valid) std::fprintf(stderr, "schema: %s\n", valid.error().detail.c_str());
    FUZZ_CHECK(valid.ok());
    FUZZ_CHECK(json_depth(m.event) <= kMaxJsonDepth);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace engram;
    auto u = parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "the update");
    if (!u) return 0;
    gateway::telegram::Settings open;  // every chat is answered
    open.token = "123456:secret";
    open.allow_all = true;
    check(*u, open);
    gateway::telegram::Settings closed;  // only chat 42: others are refused
    closed.token = "123456:secret";
    closed.allowed = {"42"};
    check(*u, closed);
    return 0;
}
