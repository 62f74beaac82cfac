// Telegram updates → events: pure and deterministic (a redelivered update must give the very same
// event, or the store would answer id_conflict instead of "already stored").
#include <catch2/catch.hpp>

#include "app.h"
#include "engram/events/catalog.h"
#include "telegram.h"

using namespace engram;
using namespace engram::gateway;
using nlohmann::json;

namespace {

telegram::Settings settings(std::set<std::string> allowed = {"111"}) {
    telegram::Settings s;
    s.mode = "polling";
    s.token = "4242:secret-part";
    s.allowed = std::move(allowed);
    return s;
}

json text_update(std::int64_t update_id, std::int64_t chat, const std::string& text) {
    return {{"update_id", update_id},
            {"message",
             {{"message_id", 7},
              {"date", 1800000000},
              {"chat", {{"id", chat}, {"type", "private"}}},
              {"from",
               {{"id", 555},
                {"is_bot", false},
                {"first_name", "Ada"},
                {"last_name", "L"},
                {"username", "ada"},
                {"language_code", "en"}}},
              {"text", text}}}};
}

Result<config::Values> load(std::map<std::string, std::string> env) {
    return config_spec().load([&](const std::string& k) -> std::optional<std::string> {
        auto it = env.find(k);
        return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
    });
}

void check_valid(const json& ev) {
    auto st = events::Catalog::builtin().validate(ev["type"].get<std::string>(), ev["data"]);
    INFO(ev.dump());
    CHECK(st.ok());
}

}  // namespace

TEST_CASE("telegram: a text message becomes MessageReceived on the chat's session, the same every time",
          "[unit][gateway][telegram]") {
    auto s = settings();
    auto m = telegram::map_update(text_update(900, 111, "hello there"), s);
    REQUIRE(m.kind == telegram::Mapped::Kind::message);
    const json& e = m.event;
    CHECK(e["type"] == "MessageReceived");
    CHECK(e["aggregate_id"] == "session:telegram:111");
    CHECK(e["id"] == Uuid::v5(ingress_ns(), "telegram:4242:900:111:7").str());
    CHECK(e["data"]["text"] == "hello there");
    CHECK(e["data"]["channel"] == "telegram");
    CHECK(e["data"]["user_id"] == "telegram:555");
    CHECK(e["data"]["session_id"] == "session:telegram:111");
    CHECK(e["data"]["chat_id"] == 111);
    CHECK(e["data"]["message_id"] == 7);
    CHECK(e["data"]["update_id"] == 900);
    CHECK(e["data"]["edited"] == false);
    CHECK(e["data"]["sent_at"] == "2027-01-15T08:00:00.000Z");
    CHECK(e["data"]["from"] == json{{"username", "ada"}, {"display_name", "Ada L"}, {"language_code", "en"}});
    CHECK_FALSE(e["data"].contains("command"));
    CHECK(e["metadata"]["correlation_id"] == e["id"]);
    CHECK(e["metadata"]["session_id"] == "session:telegram:111");
    check_valid(e);
    // Deterministic: the redelivery is the same event; another bot's update 900 is another one.
    CHECK(telegram::map_update(text_update(900, 111, "hello there"), s).event == e);
    auto other = s;
    other.token = "9999:x";
    CHECK(telegram::map_update(text_update(900, 111, "hello there"), other).event["id"] != e["id"]);
}

TEST_CASE("telegram: edits, replies, commands and captions are mapped", "[unit][gateway][telegram]") {
    auto s = settings();
    json edit = text_update(901, 111, "hello (edited)");
    edit["edited_message"] = edit["message"];
    edit.erase("message");
    edit["edited_message"]["edit_date"] = 1800000060;
    auto m = telegram::map_update(edit, s);
    REQUIRE(m.kind == telegram::Mapped::Kind::message);
    CHECK(m.event["data"]["edited"] == true);
    CHECK(m.event["data"]["message_id"] == 7);
    CHECK(m.event["data"]["sent_at"] == "2027-01-15T08:01:00.000Z");
    check_valid(m.event);
    // Telegram may reuse an update_id after a long pause: another message never maps to the same id.
    CHECK(telegram::map_update(text_update(901, 111, "hello (edited)"), s).event["id"] != m.event["id"]);

    json reply = text_update(902, 111, "yes");
    reply["message"]["reply_to_message"] = {{"message_id", 5}, {"text", "earlier"}};
    CHECK(telegram::map_update(reply, s).event["data"]["reply_to"] == 5);

    auto start = telegram::map_update(text_update(903, 111, "/start@engram_bot  from the ad "), s).event["data"];
    CHECK(start["command"] == "/start");
    CHECK(start["command_args"] == "from the ad");
    CHECK(start["text"] == "/start@engram_bot  from the ad ");
    auto help = telegram::map_update(text_update(904, 111, "/help"), s).event["data"];
    CHECK(help["command"] == "/help");
    CHECK(help["command_args"] == "");
    CHECK_FALSE(telegram::map_update(text_update(905, 111, "/"), s).event["data"].contains("command"));

    json photo = text_update(906, 111, "");
    photo["message"].erase("text");
    photo["message"]["caption"] = "my cat";
    photo["message"]["photo"] =
        json::array({{{"file_id", "small"}, {"file_size", 10}}, {{"file_id", "big"}, {"file_size", 900}}});
    auto p = telegram::map_update(photo, s);
    REQUIRE(p.kind == telegram::Mapped::Kind::message);
    CHECK(p.event["data"]["text"] == "my cat");
    CHECK(p.event["data"]["attachments"] == json::array({{{"kind", "photo"}, {"file_id", "big"}, {"size_bytes", 900}}}));
    check_valid(p.event);
}

TEST_CASE("telegram: unsupported updates are ignored with a reason", "[unit][gateway][telegram]") {
    auto s = settings();
    auto cb = telegram::map_update({{"update_id", 1}, {"callback_query", {{"id", "x"}}}}, s);
    CHECK(cb.kind == telegram::Mapped::Kind::ignored);
    CHECK(cb.why.find("callback_query") != std::string::npos);
    json service = text_update(2, 111, "");
    service["message"].erase("text");
    service["message"]["new_chat_members"] = json::array();
    CHECK(telegram::map_update(service, s).kind == telegram::Mapped::Kind::ignored);
    CHECK(telegram::map_update({{"update_id", "3"}}, s).kind == telegram::Mapped::Kind::ignored);
    json no_chat = text_update(4, 111, "hi");
    no_chat["message"].erase("chat");
    CHECK(telegram::map_update(no_chat, s).kind == telegram::Mapped::Kind::ignored);
}

TEST_CASE("telegram: a chat outside the allowed list is refused, recorded without its text", "[unit][gateway][telegram]") {
    auto s = settings({"111", "-100222"});
    auto m = telegram::map_update(text_update(950, 333, "let me in"), s);
    REQUIRE(m.kind == telegram::Mapped::Kind::refused);
    CHECK(m.chat_id == "333");
    CHECK(m.event["type"] == "AccessDenied");
    CHECK(m.event["aggregate_id"] == "access:telegram:333");
    CHECK(m.event["data"]["reason"] == "chat_not_allowed");
    CHECK(m.event["data"]["text_length"] == 9);
    CHECK(m.event.dump().find("let me in") == std::string::npos);
    // Not the id a MessageReceived of the same update would get (the allowed list may change).
    CHECK(m.event["id"] != Uuid::v5(ingress_ns(), "telegram:4242:950:333:7").str());
    check_valid(m.event);
    CHECK(telegram::map_update(text_update(951, -100222, "group"), s).kind == telegram::Mapped::Kind::message);
    auto all = s;
    all.allow_all = true;
    CHECK(telegram::map_update(text_update(952, 333, "x"), all).kind == telegram::Mapped::Kind::message);
}

TEST_CASE("telegram settings: mode, token and secret are checked together, in one line", "[unit][gateway][telegram]") {
    auto off = telegram::settings_from(*load({}));
    REQUIRE(off);
    CHECK(off->mode == "off");
    auto polling = telegram::settings_from(*load({{"TELEGRAM_BOT_TOKEN", "1:a"}, {"TELEGRAM_ALLOWED_CHAT_IDS", "1, -2"}}));
    REQUIRE(polling);
    CHECK(polling->mode == "polling");
    CHECK(polling->allowed == std::set<std::string>{"1", "-2"});
    auto padded = telegram::settings_from(*load({{"TELEGRAM_BOT_TOKEN", "1:a"}, {"TELEGRAM_ALLOWED_CHAT_IDS", "007,-0042"}}));
    CHECK(padded->allowed == std::set<std::string>{"7", "-42"});                               // as Telegram writes chat ids
    CHECK_FALSE(load({{"TELEGRAM_WEBHOOK_URL", "http://bot.example.org/telegram/webhook"}}));  // Telegram wants https
    CHECK(polling->bot_id() == "1");
    auto hook = telegram::settings_from(*load({{"TELEGRAM_BOT_TOKEN", "1:a"}, {"TELEGRAM_WEBHOOK_SECRET", "s-1"}}));
    REQUIRE(hook);
    CHECK(hook->mode == "webhook");
    auto star = telegram::settings_from(*load({{"TELEGRAM_BOT_TOKEN", "1:a"}, {"TELEGRAM_ALLOWED_CHAT_IDS", "*"}}));
    CHECK(star->allow_all);

    auto no_token = telegram::settings_from(*load({{"TELEGRAM_MODE", "polling"}}));
    REQUIRE_FALSE(no_token);
    CHECK(no_token.error().detail == "invalid configuration: TELEGRAM_MODE=polling needs TELEGRAM_BOT_TOKEN");
    auto no_secret = telegram::settings_from(*load({{"TELEGRAM_MODE", "webhook"}, {"TELEGRAM_BOT_TOKEN", "1:a"}}));
    REQUIRE_FALSE(no_secret);
    CHECK(no_secret.error().detail.find("TELEGRAM_WEBHOOK_SECRET") != std::string::npos);

    auto bad_ids = load({{"TELEGRAM_ALLOWED_CHAT_IDS", "12,abc"}});
    REQUIRE_FALSE(bad_ids);
    CHECK(bad_ids.error().detail.find("TELEGRAM_ALLOWED_CHAT_IDS must be a comma-separated list") != std::string::npos);
    auto bad_secret = load({{"TELEGRAM_WEBHOOK_SECRET", "has space"}});
    REQUIRE_FALSE(bad_secret);
    CHECK(bad_secret.error().detail.find("TELEGRAM_WEBHOOK_SECRET") != std::string::npos);
    CHECK_FALSE(load({{"TELEGRAM_MODE", "carrier-pigeon"}}));
}

TEST_CASE("telegram: odd values in an update never make an event the store refuses (fuzz finding)", "[unit][gateway][telegram]") {
    auto s = settings({"111"});
    // update_id beyond int64 (it used to wrap to a negative id), message_id an object, a date no
    // RFC 3339 year holds (it used to overflow), reply_to an array, U+0000 in the text and a name.
    auto u = json::parse(R"({"update_id":18446744073709551615,"message":{"message_id":7,"chat":{"id":111},"text":"x"}})");
    CHECK(telegram::map_update(u, s).kind == telegram::Mapped::Kind::ignored);
    u = json::parse(R"({"update_id":-1,"message":{"message_id":7,"chat":{"id":111},"text":"x"}})");
    CHECK(telegram::map_update(u, s).kind == telegram::Mapped::Kind::ignored);

    u = text_update(5, 111, std::string("a\0b", 3));
    u["message"]["message_id"] = {{"odd", {1}}};
    u["message"]["date"] = 99999999999999;
    u["message"]["reply_to_message"] = {{"message_id", {1, 2}}};
    u["message"]["from"]["username"] = std::string("x\0", 2);
    auto m = telegram::map_update(u, s);
    REQUIRE(m.kind == telegram::Mapped::Kind::message);
    const auto& d = m.event["data"];
    CHECK(d["text"] ==
          "a\xEF\xBF\xBD"
          "b");
    CHECK(d["from"]["username"] == "x\xEF\xBF\xBD");
    CHECK_FALSE(d.contains("message_id"));
    CHECK_FALSE(d.contains("reply_to"));
    CHECK_FALSE(d.contains("sent_at"));
    check_valid(m.event);
    CHECK(events::parse_new_event(m.event).ok());
    // The same for a stranger's AccessDenied.
    auto refused = telegram::map_update(u, settings({"222"}));
    REQUIRE(refused.kind == telegram::Mapped::Kind::refused);
    CHECK_FALSE(refused.event["data"].contains("message_id"));
    check_valid(refused.event);
    CHECK(events::parse_new_event(refused.event).ok());
    // Found by the fuzzer: U+0000 in a command's arguments.
    auto cmd = telegram::map_update(text_update(6, 111, std::string("/start@MyBot a\0b", 16)), s);
    REQUIRE(cmd.kind == telegram::Mapped::Kind::message);
    CHECK(cmd.event["data"]["command"] == "/start");
    CHECK(cmd.event["data"]["command_args"] ==
          "a\xEF\xBF\xBD"
          "b");
    check_valid(cmd.event);
    CHECK(events::parse_new_event(cmd.event).ok());
    // Dates at the ends of the range still format.
    u["message"]["date"] = 253402300799;  // 9999-12-31T23:59:59Z
    CHECK(telegram::map_update(u, s).event["data"]["sent_at"] == "9999-12-31T23:59:59.000Z");
}
