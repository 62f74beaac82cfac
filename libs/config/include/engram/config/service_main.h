#pragma once
// The main() every HTTP service shares: --help / --env-example, the whole configuration checked at
// start (one line and exit 2 when something is wrong), the non-loopback-without-token refusal,
// logging set up, SIGINT/SIGTERM waited for, then a graceful stop. Header-only; the service links
// engram::log. App: constructible from config::Values, with Status start(), void stop(), url().
#include "engram/config/config.h"
#include "engram/log/log.h"

#include <csignal>
#include <cstring>
#include <iostream>
#include <string>

namespace engram::config {

template <class App>
int service_main(int argc, char** argv, const std::string& name, const std::string& description, const Spec& spec,
                 const std::string& listen_setting) {
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
            std::cout << name << ": " << description << "\n\n" << spec.help();
            return 0;
        }
        if (!std::strcmp(argv[i], "--env-example")) {
            std::cout << spec.env_example();
            return 0;
        }
        std::cerr << name << ": unknown argument '" << argv[i] << "' (try --help)\n";
        return 2;
    }
    auto cfg = spec.load();
    if (!cfg) {
        std::cerr << name << ": " << cfg.error().detail << "\n";
        return 2;
    }
    if (auto s = check_exposure(listen_setting, *cfg); !s) {
        std::cerr << name << ": " << s.error().detail << "\n";
        return 2;
    }
    log::init(cfg->get("LOG_LEVEL"), cfg->get("LOG_FORMAT"));

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);  // threads started below inherit the mask

    App app(*cfg);
    if (auto s = app.start(); !s) {
        std::cerr << name << ": " << s.error().detail << "\n";
        return 1;
    }
    auto logger = log::get(name);
    logger->info("listening on {}", app.url());
    int sig = 0;
    sigwait(&set, &sig);
    logger->info("signal {} received, stopping", sig);
    app.stop();
    return 0;
}

}  // namespace engram::config
