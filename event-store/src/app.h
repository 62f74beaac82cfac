#pragma once
// engram-event-store: the HTTP API (docs/http-api.md) over the group-commit writer and the log readers.
#include "engram/config/config.h"
#include "engram/core/result.h"

#include <memory>

namespace engram::event_store {

config::Spec config_spec();

class App {
public:
    explicit App(config::Values cfg);
    ~App();
    // Binds the port and starts the writer; the database may still be down (answers 503 until it
    // is back). Errors only for what a restart cannot fix (port in use).
    Status start();
    void stop();
    std::uint16_t port() const;
    std::string url() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::event_store
