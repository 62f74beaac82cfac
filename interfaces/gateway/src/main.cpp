#include "app.h"
#include "engram/log/log.h"

#include <csignal>
#include <cstring>
#include <iostream>

int main(int argc, char** argv) {
    using namespace engram;
    auto spec = gateway::config_spec();
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
            std::cout << "engram-gateway: ingress (POST /trigger, signed webhooks) into the event store.\n\n" << spec.help();
            return 0;
        }
        if (!std::strcmp(argv[i], "--env-example")) {
            std::cout << spec.env_example();
            return 0;
        }
        std::cerr << "engram-gateway: unknown argument '" << argv[i] << "' (try --help)\n";
        return 2;
    }
    auto cfg = spec.load();
    if (!cfg) {
        std::cerr << "engram-gateway: " << cfg.error().detail << "\n";
        return 2;
    }
    if (auto s = config::check_exposure("GATEWAY_LISTEN", *cfg); !s) {
        std::cerr << "engram-gateway: " << s.error().detail << "\n";
        return 2;
    }
    log::init(cfg->get("LOG_LEVEL"), cfg->get("LOG_FORMAT"));
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    gateway::App app(*cfg);
    if (auto s = app.start(); !s) {
        std::cerr << "engram-gateway: " << s.error().detail << "\n";
        return 1;
    }
    log::get("gateway")->info("listening on {}", app.url());
    int sig = 0;
    sigwait(&set, &sig);
    app.stop();
    return 0;
}
