#include "engram/config/chats.h"

#include "engram/core/text.h"

#include <algorithm>
#include <stdexcept>

namespace engram::config {

std::optional<ChatAllowList> parse_chat_allow_list(const std::string& v) {
    ChatAllowList out;
    if (trim(v) == "*") {
        out.all = true;
        return out;
    }
    std::size_t start = 0;
    while (start <= v.size()) {
        auto comma = v.find(',', start);
        auto item = trim(std::string_view(v).substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (!item.empty()) {
            std::size_t i = item[0] == '-' ? 1 : 0;
            if (i == item.size() || item.size() > 20 ||
                !std::all_of(item.begin() + static_cast<long>(i), item.end(), [](char c) { return c >= '0' && c <= '9'; }))
                return std::nullopt;
            try {
                out.ids.insert(std::to_string(std::stoll(item)));
            } catch (const std::out_of_range&) {
                return std::nullopt;
            }
        }
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

void add_telegram_allowed_chats(Spec& spec) {
    spec.add({"TELEGRAM_ALLOWED_CHAT_IDS",
              "chat ids that reach the assistant and that answers may be sent to, comma-separated (* = every chat; "
              "empty = none); other chats get one polite refusal",
              "", false, [](const std::string& v) -> std::optional<std::string> {
                  if (parse_chat_allow_list(v)) return std::nullopt;
                  return "must be a comma-separated list of integer chat ids, or *";
              }});
}

ChatAllowList telegram_allowed_chats(const Values& v) {
    return parse_chat_allow_list(v.get("TELEGRAM_ALLOWED_CHAT_IDS")).value_or(ChatAllowList{});
}

}  // namespace engram::config
