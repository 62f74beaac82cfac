#pragma once
// Telegram ingress: updates from getUpdates (long polling) or POST /telegram/webhook become
// MessageReceived events on `session:telegram:<chat id>`, with the event id derived from the bot and
// the update_id. Chats outside TELEGRAM_ALLOWED_CHAT_IDS never reach the assistant: their update is
// recorded as AccessDenied on `access:telegram:<chat id>` and the chat gets one polite refusal.
//
// Nothing is lost or doubled: an update is acknowledged (webhook: 200; polling: the next getUpdates
// carries an offset past it, which is how Telegram forgets it) only after its event is committed. A
// crash in between makes Telegram deliver it again, and the derived id makes the store answer 200.
// Telegram itself keeps the confirmed offset, so it survives our restarts.
//
// Threading: the poller owns one thread (started by start(), stopped by stop(), which cancels a long
// poll in flight); webhook() may be called from any number of server threads at once.
#include "engram/config/config.h"
#include "engram/http/server.h"
#include "ingress.h"
#include "telegram_map.h"

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace engram::metrics {
class Registry;
}

namespace engram::gateway::telegram {

void add_settings(config::Spec& spec);

// Reads and cross-checks the TELEGRAM_* settings; the error is one line naming what is wrong.
Result<Settings> settings_from(const config::Values& v);

// The refusal a chat outside the allowed list gets, once.
inline constexpr const char* kRefusalText =
    "Sorry, this assistant is private and is not available in this chat. Your message was not read or stored.";

class Ingress {
public:
    Ingress(Settings s, AppendFn append, metrics::Registry& metrics);
    ~Ingress();
    Ingress(const Ingress&) = delete;
    Ingress& operator=(const Ingress&) = delete;

    // polling: starts the poller; webhook with a URL: registers it with setWebhook.
    void start();
    void stop();

    const Settings& settings() const;
    // POST /telegram/webhook (the secret header is checked here).
    http::Response webhook(const http::Request& req);
    // For /readyz: {"mode", "state"}; state off | starting | ok | conflict | unauthorized | unreachable.
    nlohmann::json status() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::gateway::telegram
