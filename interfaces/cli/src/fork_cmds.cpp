// engram fork: a new session branching off another at a position (engram/projections/fork.h).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "common.h"

namespace engram::cli {
namespace {

struct ForkOpts {
    std::string session;
    std::int64_t at = 0;
    std::string model, prompt, key;
};

int fork(const Globals& g, const ForkOpts& o) {
    Store store(g);
    projections::ForkRequest req{
        .origin = o.session, .at = o.at, .model = o.model, .prompt = o.prompt, .source = "cli", .key = o.key};
    auto ev = projections::fork_event(req, session_reader(store));
    if (!ev) {
        // A position or session the log does not have is the caller's to fix; nothing was written.
        if (ev.error().code == "invalid_parameter") usage(ev.error().detail);
        fail(ev.error().detail);
    }
    int status = 0;
    auto answer = store.post("/events", *ev, &status);
    const nlohmann::json& d = (*ev)["data"];
    nlohmann::json out = {{"session_id", d["forked_session_id"]},
                          {"origin_session_id", d["origin_session_id"]},
                          {"at_position", d["at_position"]},
                          {"event_id", (*ev)["id"]},
                          {"created", status == 201}};
    if (answer.contains("events") && answer["events"].is_array() && !answer["events"].empty())
        out["position"] = answer["events"][0].value("position", 0);
    if (g.json) {
        std::printf("%s\n", out.dump(2).c_str());
        return 0;
    }
    const std::string fork = d["forked_session_id"];
    std::printf("%s %s, forked from %s at position %lld; the assistant answers it again.\n",
                status == 201 ? "created" : "already created", fork.c_str(), o.session.c_str(), static_cast<long long>(o.at));
    std::printf("follow it: engram events tail --follow --aggregate %s\n", fork.c_str());
    std::printf("its conversation (the origin's up to %lld, then its own): engram replay conversation %s\n",
                static_cast<long long>(o.at), fork.c_str());
    return 0;
}

}  // namespace

void add_fork_commands(CLI::App& app, Globals& g, Action& action) {
    auto o = std::make_shared<ForkOpts>();
    auto* f = app.add_subcommand(
        "fork", "time travel that branches: a new session whose history is <session>'s up to --at, answered again");
    f->add_option("session", o->session, "the session to fork, session:<channel>:<id> (a fork too)")->required();
    f->add_option("--at", o->at, "the global position to branch at: the fork's history is the session's events up to it")
        ->required();
    f->add_option("--model", o->model, "the model of the fork's run (default: the AI processor's)");
    f->add_option("--prompt", o->prompt, "what the user asks in the fork (default: the last user message up to --at, again)");
    f->add_option("--key", o->key, "an idempotency key: the same key and session make the same fork, once");
    f->callback([&g, &action, o] { action = [&g, o] { return fork(g, *o); }; });
}

}  // namespace engram::cli
