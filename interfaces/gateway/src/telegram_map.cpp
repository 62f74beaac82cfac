#include "telegram_map.h"

#include "engram/core/json.h"
#include "engram/core/text.h"
#include "engram/core/time.h"
#include "engram/core/uuid.h"
#include "ingress.h"

#include <cstdint>
#include <optional>

namespace engram::gateway::telegram {

using nlohmann::json;

namespace {

json from_of(const json& from) {
    json f = json::object();
    if (!from.is_object()) return f;
    if (from.contains("username") && from["username"].is_string()) f["username"] = from["username"];
    std::string name;
    for (const char* k : {"first_name", "last_name"})
        if (from.contains(k) && from[k].is_string()) name += (name.empty() ? "" : " ") + from[k].get<std::string>();
    if (!name.empty()) f["display_name"] = name;
    if (from.contains("language_code") && from["language_code"].is_string()) f["language_code"] = from["language_code"];
    return f;
}

json attachments_of(const json& msg) {
    json out = json::array();
    for (const char* kind : {"photo", "document", "audio", "voice", "video", "sticker"}) {
        if (!msg.contains(kind)) continue;
        json f = msg[kind];
        if (f.is_array()) {  // photo: the sizes of one picture, smallest first
            if (f.empty()) continue;
            f = f.back();
        }
        if (!f.is_object()) continue;
        json a = {{"kind", kind}};
        if (f.contains("file_id") && f["file_id"].is_string()) a["file_id"] = f["file_id"];
        if (f.contains("file_name") && f["file_name"].is_string()) a["file_name"] = f["file_name"];
        if (f.contains("mime_type") && f["mime_type"].is_string()) a["mime_type"] = f["mime_type"];
        if (f.contains("file_size") && f["file_size"].is_number_integer() && f["file_size"].get<std::int64_t>() >= 0)
            a["size_bytes"] = f["file_size"];
        out.push_back(std::move(a));
    }
    return out;
}

// Telegram's ids are integers (message ids, chat ids) and the catalog allows strings too: anything
// else would make the store refuse the event, and the update would be lost.
bool is_id(const json& v) { return v.is_number_integer() || v.is_string(); }

// A Unix time that formats as an RFC 3339 date-time (years 0000 to 9999), else nullopt.
std::optional<std::int64_t> unix_time(const json& v) {
    if (!v.is_number_integer()) return std::nullopt;
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > 253402300799ULL) return std::nullopt;
    auto t = v.get<std::int64_t>();
    if (t < -62167219200LL || t > 253402300799LL) return std::nullopt;
    return t;
}

std::string first_other_key(const json& u) {
    for (auto it = u.begin(); it != u.end(); ++it)
        if (it.key() != "update_id") return it.key();
    return "(none)";
}

}  // namespace

std::string Settings::bot_id() const {
    auto colon = token.find(':');
    return colon == std::string::npos ? std::string("bot") : token.substr(0, colon);
}

Mapped map_update(const json& u, const Settings& s) {
    Mapped m;
    // A non-negative 64-bit integer, as the catalog requires (and as the poller's offset needs).
    if (!u.is_object() || !u.contains("update_id") || !u["update_id"].is_number_integer() ||
        (u["update_id"].is_number_unsigned() ? u["update_id"].get<std::uint64_t>() > INT64_MAX
                                             : u["update_id"].get<std::int64_t>() < 0)) {
        m.why = "no integer update_id";
        return m;
    }
    const auto update_id = u["update_id"].get<std::int64_t>();
    const char* kind = nullptr;
    for (const char* k : {"message", "edited_message"})
        if (u.contains(k) && u[k].is_object()) kind = k;
    if (!kind) {
        m.why = "unsupported update kind '" + first_other_key(u) + "'";
        return m;
    }
    const json& msg = u[kind];
    if (!msg.contains("chat") || !msg["chat"].is_object() || !msg["chat"].contains("id") ||
        !msg["chat"]["id"].is_number_integer()) {
        m.why = "a message without an integer chat.id";
        return m;
    }
    const bool edited = std::string(kind) == "edited_message";
    const json chat = msg["chat"]["id"];
    m.chat_id = chat.dump();
    const json from = msg.contains("from") && msg["from"].is_object() ? msg["from"] : json::object();
    std::string user_id = "telegram:" + (from.contains("id") && from["id"].is_number_integer() ? from["id"].dump() : m.chat_id);
    std::string text;
    for (const char* k : {"text", "caption"})
        if (text.empty() && msg.contains(k) && msg[k].is_string()) text = msg[k].get<std::string>();
    json attachments = attachments_of(msg);
    if (text.empty() && attachments.empty()) {
        m.why = "a message without text or a supported attachment (e.g. a service message)";
        return m;
    }
    // Telegram's own ids of this input. update_id alone is not enough: after a week without updates
    // Telegram may start update_ids anew, so the chat and message id are part of the derived id too.
    const std::string message_id = msg.contains("message_id") ? msg["message_id"].dump() : "-";
    const std::string uid = std::to_string(update_id) + ":" + m.chat_id + ":" + message_id + (edited ? ":edit" : "");

    if (!s.allowed_chat(m.chat_id)) {
        m.kind = Mapped::Kind::refused;
        auto id = Uuid::v5(ingress_ns(), "telegram-refused:" + s.bot_id() + ":" + uid);
        json data = {{"channel", "telegram"}, {"chat_id", chat},        {"reason", "chat_not_allowed"},
                     {"user_id", user_id},    {"update_id", update_id}, {"text_length", utf8_length(text)}};
        if (msg.contains("message_id") && is_id(msg["message_id"])) data["message_id"] = msg["message_id"];
        if (auto f = from_of(from); !f.empty()) data["from"] = f;
        replace_nul(data);
        m.event = {{"id", id.str()},
                   {"type", "AccessDenied"},
                   {"aggregate_id", "access:telegram:" + m.chat_id},
                   {"data", data},
                   {"metadata", {{"source", "gateway:telegram"}, {"correlation_id", id.str()}, {"user_id", user_id}}}};
        return m;
    }

    m.kind = Mapped::Kind::message;
    const std::string session = "session:telegram:" + m.chat_id;
    auto id = Uuid::v5(ingress_ns(), "telegram:" + s.bot_id() + ":" + uid);
    json data = {{"channel", "telegram"}, {"text", text},           {"user_id", user_id}, {"session_id", session},
                 {"chat_id", chat},       {"update_id", update_id}, {"edited", edited}};
    if (msg.contains("message_id") && is_id(msg["message_id"])) data["message_id"] = msg["message_id"];
    if (msg.contains("reply_to_message") && msg["reply_to_message"].is_object() &&
        msg["reply_to_message"].contains("message_id") && is_id(msg["reply_to_message"]["message_id"]))
        data["reply_to"] = msg["reply_to_message"]["message_id"];
    if (!text.empty() && text[0] == '/') {
        auto end = text.find_first_of(" \t\r\n");
        std::string cmd = text.substr(0, end);
        if (auto at = cmd.find('@'); at != std::string::npos) cmd.resize(at);  // "/start@MyBot"
        if (cmd.size() > 1 && cmd.size() <= 64) {
            data["command"] = cmd;
            data["command_args"] = end == std::string::npos ? "" : trim(text.substr(end));
        }
    }
    if (auto f = from_of(from); !f.empty()) data["from"] = f;
    if (!attachments.empty()) data["attachments"] = attachments;
    const char* date_key = edited && msg.contains("edit_date") ? "edit_date" : "date";
    if (msg.contains(date_key))
        if (auto t = unix_time(msg[date_key])) data["sent_at"] = format_rfc3339(SysTime(std::chrono::seconds(*t)));
    // The store cannot hold U+0000 (jsonb): the text keeps a visible U+FFFD instead of being lost.
    replace_nul(data);
    m.event = {{"id", id.str()},
               {"type", "MessageReceived"},
               {"aggregate_id", session},
               {"data", data},
               {"metadata",
                {{"source", "gateway:telegram"}, {"correlation_id", id.str()}, {"user_id", user_id}, {"session_id", session}}}};
    return m;
}

}  // namespace engram::gateway::telegram
