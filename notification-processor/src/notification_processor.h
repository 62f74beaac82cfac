#pragma once
// engram-notification-processor: delivers MessageGenerated to the session's channel (Telegram,
// email over SMTP, Slack incoming webhook) exactly as far as a crash allows: at most once. See README.md.
#include "engram/config/chats.h"
#include "engram/config/config.h"
#include "engram/processor/processor.h"
#include <pqxx/pqxx>
#include "rate_limit.h"
#include "split.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace engram::notification {

struct Settings {
    std::string telegram_token;                                  // TELEGRAM_BOT_TOKEN
    std::string telegram_api_base = "https://api.telegram.org";  // TELEGRAM_API_BASE
    // TELEGRAM_ALLOWED_CHAT_IDS, as in the gateway: the chats a message may be sent to (empty = none).
    // Whoever wrote the MessageGenerated, a chat outside it is never sent anything.
    config::ChatAllowList telegram_allowed;
    std::string smtp_url;           // SMTP_URL (smtp:// or smtps://)
    std::string email_from;         // EMAIL_FROM
    std::string slack_webhook_url;  // SLACK_WEBHOOK_URL
    RateLimits limits;
    int max_send_attempts = 5;               // attempts of one part on transient errors (5xx, refused connection)
    int max_rate_limited = 10;               // 429 answers tolerated for one part
    std::chrono::milliseconds backoff{500};  // doubles per transient error
    std::chrono::milliseconds max_backoff{10000};
    std::chrono::seconds max_retry_after{300};  // a longer Telegram retry_after = NotificationFailed rate_limited
    std::chrono::milliseconds http_timeout{15000};
    Clock clock = steady_clock();
};

// The processor's own settings (run_main's `extra`) and Settings from loaded values.
config::Spec settings_spec();
Settings settings_from(const config::Values& v);

// Creates notification_deliveries (idempotent, under an advisory lock).
void migrate(pqxx::connection& c);

// The handler for MessageGenerated.
processor::Handler make_handler(Settings s);

// The event types delivered.
std::vector<std::string> handled_types();

// The Telegram chat of a MessageGenerated: data.chat_id, else the <id> of session:telegram:<id>
// (aggregate id or data.session_id / metadata.session_id); "" when none.
std::string telegram_chat_id(const events::Event& e);
// The delivery channel: data.channel, else the <channel> of session:<channel>:<id>.
std::string channel_of(const events::Event& e);

}  // namespace engram::notification
