// The runtime's store client (Context::append) through nginx in front of the real event store: nginx
// re-frames every answer (its own buffering, keep-alive to the store, chunked or Content-Length), as a
// proxy in front of the store would in production.
#include "engram/http/client.h"
#include "engram/log/log.h"
#include "engram/processor/processor.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

#include <atomic>

using namespace engram;
using namespace std::chrono_literals;
using nlohmann::json;

TEST_CASE("processor runtime: 200 derived appends through nginx, none failed or parked", "[integration][processor]") {
    log::init("warn", "text");
    testing::Stack s("proc-nginx");
    testing::Nginx nginx(s.url());
    processor::Options o;
    o.name = "nginx-proc";
    o.nats_url = s.nats().url();
    o.database_url = s.db();
    o.event_store_url = nginx.url();
    o.types = {"TestStep"};
    o.concurrency = 4;
    o.max_attempts = 1;  // a single failed append parks the event: the check below sees it
    o.lease_ttl = 1500ms;
    o.tick = 250ms;
    o.parked_poll = 200ms;
    o.drain_timeout = 5s;
    std::atomic<int> failures{0};
    processor::Runtime rt(o, [&](processor::Context& ctx) -> Status {
        events::NewEvent e;
        e.type = "TestEchoed";
        e.aggregate_id = ctx.event().aggregate_id;
        e.data = {{"n", ctx.event().data.value("n", -1)}, {"pad", std::string(3000, 'p')}};
        auto r = ctx.append("echo", std::move(e));
        if (!r) {
            ++failures;
            return r.error();
        }
        return ok();
    });
    REQUIRE(rt.start().ok());
    http::Client c(s.url());
    const int n = 200;
    for (int i = 0; i < n; ++i) {
        auto r = c.post_json("/events",
                             {{"type", "TestStep"}, {"aggregate_id", "agg-" + std::to_string(i % 8)}, {"data", {{"n", i}}}});
        REQUIRE(r.ok());
        REQUIRE(r->status == 201);
    }
    REQUIRE(testing::eventually([&] { return s.count("TestEchoed") == n; }, 60s));
    CHECK(failures == 0);
    rt.stop();
    CHECK(testing::eventually([&] { return nginx.count("201 \"POST /events HTTP/1.1\" upstream=201") == std::size_t(n); }));
}
