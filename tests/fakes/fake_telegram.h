#pragma once
// A scriptable fake Telegram Bot API on 127.0.0.1 (free port) for tests. Thread-safe.
//
//   POST|GET /bot<token>/sendMessage  -> {"ok":true,"result":{"message_id":N,"chat":{"id":..},"date":..,"text":..}}
//       (JSON, form-encoded or query parameters). Every accepted message is recorded, in order, when it
//       is RECEIVED (before an optional delay): Telegram delivers a message even if the client vanishes
//       while waiting for the answer. Scripted errors (429 with retry_after, 400, 403, 5xx) are consumed
//       in order by the next sendMessage calls and are not recorded as messages.
//   /bot<token>/getUpdates            -> the scripted update queue (offset confirms, timeout long-polls),
//                                        or 409 in conflict mode
//   /bot<token>/setWebhook, deleteWebhook, getWebhookInfo, getMe -> ok stubs (calls recorded)
//   another token                     -> 401 {"ok":false,"error_code":401,"description":"Unauthorized"}
//
// Include as "fake_telegram.h"; link engram_fake_chat.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace engram::fakes {

class FakeTelegram {
public:
    explicit FakeTelegram(std::string token = "123456:fake-token");  // starts listening
    ~FakeTelegram();                                                 // stops (delayed answers still sleeping are cut short)
    FakeTelegram(const FakeTelegram&) = delete;
    FakeTelegram& operator=(const FakeTelegram&) = delete;

    std::string base_url() const;  // http://127.0.0.1:<port>  (TELEGRAM_API_BASE)
    int port() const;
    const std::string& token() const;

    struct Message {
        std::string chat_id;  // as sent (a number or "@name"), as a string
        std::string text;
        std::int64_t message_id = 0;
        nlohmann::json request;  // every parameter of the call
    };
    std::vector<Message> messages() const;  // accepted sendMessage calls, in order of arrival
    std::size_t message_count() const;
    std::size_t send_calls() const;  // every sendMessage call, errors included
    // Every sendChatAction call: (chat_id as a string, action), in order.
    std::vector<std::pair<std::string, std::string>> chat_actions() const;

    // Script for the next sendMessage calls (in order; each entry answers one call).
    void push_429(int retry_after = 1, int count = 1);
    void push_error(int status, std::string description = "Bad Request: fake error", int count = 1);
    // Every sendMessage answer is delayed by d (after the message was recorded); 0 = none.
    void set_send_delay(std::chrono::milliseconds d);
    // Only the next accepted sendMessage answer is delayed by d.
    void delay_next(std::chrono::milliseconds d);

    // getUpdates: push an update object (update_id assigned when missing, increasing from 1).
    void push_update(nlohmann::json update);
    // true: getUpdates answers 409 Conflict (another poller / a webhook is set).
    void set_conflict(bool on);
    std::vector<nlohmann::json> get_updates_calls() const;  // parameters of each call
    std::vector<nlohmann::json> webhook_calls() const;      // setWebhook/deleteWebhook parameters
    std::vector<std::string> methods() const;               // every method called, in order

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::fakes
