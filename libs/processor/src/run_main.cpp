// run_main(): the shared main() of processor executables.
#include "engram/http/guard.h"
#include "engram/log/log.h"
#include "engram/processor/processor.h"

#include <algorithm>
#include <csignal>
#include <cstring>
#include <iostream>
#include <pthread.h>

namespace engram::processor {

std::string env_prefix(const std::string& name) {
    std::string out;
    for (char c : name)
        out += (c == '-' || c == '.' || c == ' ') ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return out;
}

config::Spec config_spec(const Options& d) {
    const auto p = env_prefix(d.name);
    config::Spec s;
    s.add({"NATS_URL", "NATS server with JetStream (stream " + d.stream + ")",
           d.nats_url.empty() ? "nats://127.0.0.1:54222" : d.nats_url, false, config::url({"nats", "tls"})});
    s.add({"DATABASE_URL", "PostgreSQL connection URL (projections, processor_parked)",
           d.database_url.empty() ? "postgresql://postgres@127.0.0.1:55432/engram" : d.database_url, false,
           config::url({"postgresql", "postgres"})});
    s.add({"EVENT_STORE_URL", "base URL of the event store (derived events are appended there)",
           d.event_store_url.empty() ? "http://127.0.0.1:8080" : d.event_store_url, false, config::url({"http", "https"})});
    s.add({"ENGRAM_API_TOKEN", "bearer token for the event store, and required to listen on a non-loopback address", d.api_token,
           false, nullptr, true});
    http::add_guard_settings(s);
    s.add({p + "_LISTEN", "host:port of the health/metrics server (/healthz, /readyz, /metrics)",
           d.listen.empty() ? "127.0.0.1:0" : d.listen, false, config::listen_address()});
    s.add({p + "_CONCURRENCY", "aggregates handled at once", std::to_string(d.concurrency), false, config::int_range(1, 1024)});
    s.add({p + "_MAX_ATTEMPTS",
           "attempts of a deterministic failure before an event is parked (unavailable dependencies are "
           "retried without limit)",
           std::to_string(d.max_attempts), false, config::int_range(1, 100)});
    s.add({"ENGRAM_PARTITIONS",
           "partitions of the stream (by aggregate id), leased to the running instances; fixed for a deployment (recorded in "
           "the database by the first service that starts)",
           std::to_string(d.partitions), false, config::int_range(1, events::kMaxPartitions)});
    s.add({p + "_LEASE_TTL_MS",
           "a partition whose owner has not renewed its lease for this long is taken over by another instance (takeover "
           "after a crash within this plus one tick; the tick is a sixth of it)",
           std::to_string(d.lease_ttl.count()), false, config::int_range(300, 600000)});
    s.add({p + "_HANDLER_TIMEOUT_MS",
           "a handler's deadline: past it Context::stopping() is true and a hand-over does not wait for it",
           std::to_string(d.handler_timeout.count()), false, config::int_range(100, 86400000)});
    s.add({p + "_DRAIN_TIMEOUT_MS",
           "on SIGTERM or a hand-over, how long running handlers may finish before the partition is released",
           std::to_string(d.drain_timeout.count()), false, config::int_range(0, 600000)});
    config::add_logging(s);
    return s;
}

Options options_from(const config::Values& v, Options o) {
    const auto p = env_prefix(o.name);
    o.nats_url = v.get("NATS_URL");
    o.database_url = v.get("DATABASE_URL");
    o.event_store_url = v.get("EVENT_STORE_URL");
    o.api_token = v.get("ENGRAM_API_TOKEN");
    o.allowed_hosts = http::guard_options(v).allowed_hosts;
    o.listen = v.get(p + "_LISTEN");
    o.concurrency = static_cast<int>(v.get_int(p + "_CONCURRENCY"));
    o.max_attempts = static_cast<int>(v.get_int(p + "_MAX_ATTEMPTS"));
    o.partitions = static_cast<int>(v.get_int("ENGRAM_PARTITIONS"));
    o.lease_ttl = std::chrono::milliseconds(v.get_int(p + "_LEASE_TTL_MS"));
    o.tick = std::max(std::chrono::milliseconds(50), o.lease_ttl / 6);
    o.handler_timeout = std::chrono::milliseconds(v.get_int(p + "_HANDLER_TIMEOUT_MS"));
    o.drain_timeout = std::chrono::milliseconds(v.get_int(p + "_DRAIN_TIMEOUT_MS"));
    return o;
}

int run_main(int argc, char** argv, Options defaults, config::Spec extra,
             std::function<Handler(const config::Values&)> make_handler) {
    return run_main_batched(argc, argv, std::move(defaults), std::move(extra),
                            [make_handler = std::move(make_handler)](const config::Values& v) {
                                return Handlers{make_handler(v), nullptr};
                            });
}

int run_main_batched(int argc, char** argv, Options defaults, config::Spec extra,
                     std::function<Handlers(const config::Values&)> make_handlers) {
    const std::string prog = "engram-" + defaults.name;
    auto spec = config_spec(defaults);
    for (const auto& s : extra.settings()) spec.add(s);
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
            std::cout << prog << ": engram processor '" << defaults.name << "'.\n\n" << spec.help();
            return 0;
        }
        if (!std::strcmp(argv[i], "--env-example")) {
            std::cout << spec.env_example();
            return 0;
        }
        std::cerr << prog << ": unknown argument '" << argv[i] << "' (try --help)\n";
        return 2;
    }
    auto cfg = spec.load();
    if (!cfg) {
        std::cerr << prog << ": " << cfg.error().detail << "\n";
        return 2;
    }
    if (auto s = config::check_exposure(env_prefix(defaults.name) + "_LISTEN", *cfg); !s) {
        std::cerr << prog << ": " << s.error().detail << "\n";
        return 2;
    }
    log::init(cfg->get("LOG_LEVEL"), cfg->get("LOG_FORMAT"));

    Handlers handlers;
    try {
        handlers = make_handlers(*cfg);
    } catch (const std::exception& e) {
        std::cerr << prog << ": " << e.what() << "\n";
        return 2;
    }
    if (!handlers.one) {
        std::cerr << prog << ": no handler\n";
        return 2;
    }

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);  // threads started below inherit the mask

    Runtime rt(options_from(*cfg, std::move(defaults)), std::move(handlers.one), std::move(handlers.batch));
    if (auto s = rt.start(); !s) {
        std::cerr << prog << ": " << s.error().detail << "\n";
        return 1;
    }
    auto log = log::get("processor");
    log->info("{} running; health on port {}", prog, rt.port());
    int sig = 0;
    sigwait(&set, &sig);
    log->info("signal {} received, stopping", sig);
    rt.stop();
    return 0;
}

}  // namespace engram::processor
