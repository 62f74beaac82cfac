// The fold behind POST /trigger?wait: which events of a session are the trigger's run.
#include "trigger_wait.h"

#include <catch2/catch.hpp>

using namespace engram;
using nlohmann::json;

namespace {
json ev(const std::string& type, const std::string& id, json data, std::int64_t pos = 0) {
    return {{"type", type}, {"id", id}, {"position", pos}, {"data", std::move(data)}};
}
}  // namespace

TEST_CASE("trigger waits: a run is folded from its own events only", "[unit][gateway]") {
    gateway::RunOutcome r;
    gateway::fold_run_event(r, "t1", ev("MessageGenerated", "m0", {{"text", "before"}, {"run_id", "r1"}}));
    CHECK(r.state == "pending");
    gateway::fold_run_event(r, "t1", ev("AIProcessingStarted", "s0", {{"run_id", "r0"}, {"trigger_event_id", "t0"}}));
    CHECK(r.state == "pending");  // another trigger's run
    gateway::fold_run_event(r, "t1", ev("AIProcessingStarted", "s1", {{"run_id", "r1"}, {"trigger_event_id", "t1"}}));
    CHECK(r.state == "running");
    gateway::fold_run_event(r, "t1", ev("MessageGenerated", "m1", {{"text", "hi"}, {"run_id", "r1"}}, 7));
    gateway::fold_run_event(r, "t1", ev("MessageGenerated", "m2", {{"text", "other"}, {"run_id", "r0"}}, 8));
    gateway::fold_run_event(r, "t1", ev("AIProcessingCompleted", "c0", {{"run_id", "r0"}, {"trigger_event_id", "t0"}}));
    CHECK_FALSE(r.finished());
    gateway::fold_run_event(r, "t1",
                            ev("AIProcessingFailed", "f1", {{"run_id", "r1"}, {"reason", "model_error"}, {"detail", "x"}}));
    CHECK(r.state == "failed");
    CHECK(r.detail == json{{"reason", "model_error"}, {"detail", "x"}});
    REQUIRE(r.messages.size() == 1);
    CHECK(r.messages[0] == json{{"text", "hi"}, {"event_id", "m1"}, {"position", 7}});
    gateway::fold_run_event(r, "t1", ev("MessageGenerated", "m3", {{"text", "late"}, {"run_id", "r1"}}));
    CHECK(r.messages.size() == 1);  // finished: nothing changes any more
    gateway::fold_run_event(r, "t1", json("garbage"));
    gateway::fold_run_event(r, "t1", json{{"type", "AIProcessingStarted"}, {"data", 5}});
    CHECK(r.state == "failed");
}
