#include "notification_processor.h"

#include "engram/log/log.h"

#include <cstdlib>

int main(int argc, char** argv) {
    using namespace engram;
    processor::Options defaults;
    defaults.name = "notification-processor";
    defaults.types = notification::handled_types();
    config::Spec extra = notification::settings_spec();
    // How long an unacknowledged delivery waits before NATS redelivers it (after a crash).
    extra.add({"NOTIFICATION_PROCESSOR_ACK_WAIT_MS", "JetStream ack wait of the consumer in milliseconds", "30000", false,
               config::int_range(1000, 3600000)});
    if (const char* a = std::getenv("NOTIFICATION_PROCESSOR_ACK_WAIT_MS")) {
        try {
            long long ms = std::stoll(a);
            if (ms >= 1000 && ms <= 3600000) defaults.ack_wait = std::chrono::milliseconds(ms);
        } catch (...) {  // reported by the configuration check
        }
    }
    return processor::run_main(argc, argv, defaults, extra, [](const config::Values& v) {
        auto conn = pg::connect(v.get("DATABASE_URL"));
        if (!conn) throw std::runtime_error(conn.error().detail);
        notification::migrate(**conn);
        auto s = notification::settings_from(v);
        if (!s.telegram_token.empty() && !s.telegram_allowed.all && s.telegram_allowed.ids.empty())
            log::get("notification-processor")
                ->warn("TELEGRAM_ALLOWED_CHAT_IDS is empty: every Telegram delivery will fail with chat_not_allowed");
        log::get("notification-processor")
            ->info("channels: telegram {} ({}), email {}, slack {}", s.telegram_token.empty() ? "off" : "on", s.telegram_api_base,
                   s.smtp_url.empty() || s.email_from.empty() ? "off" : "on", s.slack_webhook_url.empty() ? "off" : "on");
        return notification::make_handler(std::move(s));
    });
}
