#pragma once
// engram-gateway: turns outside input into events, answering success only after the store has
// committed them, with event ids derived from the source's own ids so a retried delivery is stored
// once: POST /trigger, signed webhooks POST /webhooks/{source}, Telegram (polling or webhook,
// telegram.h); the web chat is webchat.h.
#include "engram/config/config.h"
#include "engram/core/result.h"

#include <functional>
#include <memory>

namespace engram::gateway {

config::Spec config_spec();

class App {
public:
    // `now_s` returns the current Unix time in seconds (injected so tests can age timestamps).
    explicit App(config::Values cfg, std::function<std::int64_t()> now_s = nullptr);
    ~App();
    Status start();
    void stop();
    std::uint16_t port() const;
    std::string url() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::gateway
