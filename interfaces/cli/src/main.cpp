// engram: the command-line tool of the engram event store (docs/operations.md).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "common.h"

using namespace engram::cli;

namespace {

const char* kFooter = R"(Commands:
  events tail [--follow] [--type GLOB] [--aggregate A] [--after P] [--limit N]
  events get ID
  append --type T --aggregate A [--data JSON] [--metadata JSON] [--id UUID] [--expected-version N]
  replay <projection> <id> [--as-of P|TIME] [--steps]
  fork <session> --at P [--model M] [--prompt TEXT] [--key K]
  projections list
  projections rebuild <name>
  parked list [--processor NAME]
  parked retry <event_id>|--all [--processor NAME]
  processors [--processor NAME]

Exit codes: 0 success, 1 failure (one line "engram: <reason>" on stderr), 2 bad arguments.
Environment: EVENT_STORE_URL, ENGRAM_API_TOKEN, DATABASE_URL.)";

int run(int argc, char** argv) {
    Globals g;
    CLI::App app{"engram: inspect and operate the engram event log (events, time travel, projections, parked events, processors)",
                 "engram"};
    app.fallthrough();  // global options are accepted after the subcommand too
    app.require_subcommand(1);
    app.footer(kFooter);
    app.add_option("--url", g.url, "event store base URL")->envname("EVENT_STORE_URL")->capture_default_str();
    app.add_option("--token", g.token, "API token, sent as Authorization: Bearer")->envname("ENGRAM_API_TOKEN");
    app.add_option("--database-url", g.database_url, "PostgreSQL URL of the event store's database (rebuild, parked, processors)")
        ->envname("DATABASE_URL");
    app.add_flag("--json", g.json, "machine-readable output");
    app.add_flag("--progress", g.progress, "show the progress bar even when stderr is not a terminal");

    Action action;
    add_events_commands(app, g, action);
    add_projection_commands(app, g, action);
    add_parked_commands(app, g, action);
    add_processor_commands(app, g, action);
    add_fork_commands(app, g, action);
    // The command list is for `engram --help` only (subcommands inherit it; a footer of their own stays).
    std::function<void(CLI::App&)> no_footer = [&](CLI::App& a) {
        for (auto* sub : a.get_subcommands({})) {
            if (sub->get_footer() == kFooter) sub->footer("");
            no_footer(*sub);
        }
    };
    no_footer(app);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help, --help-all
        std::fprintf(stderr, "engram: %s (see engram --help)\n", one_line(e.what()).c_str());
        return kExitUsage;
    }
    if (!action) {
        std::fprintf(stderr, "engram: no command given (see engram --help)\n");
        return kExitUsage;
    }
    return action();
}

}  // namespace

int main(int argc, char** argv) {
    try {
        int rc = run(argc, argv);
        std::fflush(stdout);
        return rc;
    } catch (const Failure& f) {
        std::fflush(stdout);
        std::fprintf(stderr, "engram: %s\n", one_line(f.what()).c_str());
        return f.code;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "engram: %s\n", one_line(e.what()).c_str());
        return kExitFailure;
    }
}
