#include "notification_processor.h"

#include "engram/log/log.h"

#include <cstdlib>

int main(int argc, char** argv) {
    using namespace engram;
    processor::Options defaults;
    defaults.name = "notification-processor";
    defaults.types = notification::handled_types();
    config::Spec extra = notification::settings_spec();
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
