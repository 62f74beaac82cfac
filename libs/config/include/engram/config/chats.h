#pragma once
// TELEGRAM_ALLOWED_CHAT_IDS, declared once for the two services that read it: the gateway (which
// chats reach the assistant) and the notification processor (which chats it may deliver to, so an
// event naming another chat is never sent there, whoever wrote it).
#include "engram/config/config.h"

#include <optional>
#include <set>
#include <string>

namespace engram::config {

struct ChatAllowList {
    bool all = false;           // "*": every chat
    std::set<std::string> ids;  // decimal chat ids as Telegram writes them ("007" is chat 7); empty = no chat

    bool allows(const std::string& chat_id) const { return all || ids.count(chat_id) > 0; }
};

// "1, -2,007" -> {1, -2, 7}; "*" -> all; "" -> no chat; nullopt when an item is not an integer.
std::optional<ChatAllowList> parse_chat_allow_list(const std::string& v);
// Declares TELEGRAM_ALLOWED_CHAT_IDS.
void add_telegram_allowed_chats(Spec& spec);
ChatAllowList telegram_allowed_chats(const Values& v);

}  // namespace engram::config
