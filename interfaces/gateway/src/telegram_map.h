#pragma once
// Telegram's half of the ingress that needs no network: the settings and the pure mapping of one
// update to the event it becomes. Apart from telegram.cpp (the poller and the webhook) so the
// mapping can be fuzzed without building the HTTP stack.
#include <nlohmann/json.hpp>
#include <set>
#include <string>

namespace engram::gateway::telegram {

struct Settings {
    std::string mode = "off";  // off | polling | webhook
    std::string token;
    std::string api_base = "https://api.telegram.org";
    std::string webhook_secret;
    std::string webhook_url;        // when set (webhook mode), registered with setWebhook at start
    bool allow_all = false;         // TELEGRAM_ALLOWED_CHAT_IDS=*
    std::set<std::string> allowed;  // chat ids, decimal
    int poll_timeout_s = 25;
    int conflict_retry_s = 60;

    // The numeric bot id before ':' in the token (not secret); part of every derived event id so two
    // bots' update_ids never collide.
    std::string bot_id() const;
    bool allowed_chat(const std::string& chat_id) const { return allow_all || allowed.count(chat_id) > 0; }
};

// One update, mapped. Pure: the same update always gives the same event (ids and content), which is
// what makes a redelivery land on the stored event.
struct Mapped {
    enum class Kind { message, refused, ignored };
    Kind kind = Kind::ignored;
    nlohmann::json event;  // message: MessageReceived; refused: AccessDenied
    std::string chat_id;   // message/refused
    std::string why;       // ignored: why, for the log line
};
Mapped map_update(const nlohmann::json& update, const Settings& s);

}  // namespace engram::gateway::telegram
