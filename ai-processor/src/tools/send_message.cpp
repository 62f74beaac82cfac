// send_message: a MessageGenerated on the session, delivered to the session's channel by the
// notification processor.
#include "tools.h"

namespace engram::ai {

Tool make_send_message_tool() {
    return Tool{
        "send_message",
        "Send a message to the user on the conversation's channel. This is the only way the user sees "
        "anything you write.",
        {{"type", "object"},
         {"properties",
          {{"text", {{"type", "string"}, {"description", "The message to send."}}},
           {"format",
            {{"type", "string"}, {"enum", {"plain", "markdown", "html"}}, {"description", "Markup of text (default plain)."}}}}},
         {"required", {"text"}}},
        [](ToolContext& ctx, const nlohmann::json& args) -> ToolResult {
            auto text = string_arg(args, "text");
            if (!text) return ToolResult::error("send_message needs a non-empty string argument 'text'");
            nlohmann::json data = {{"text", *text},
                                   {"channel", ctx.channel},
                                   {"user_id", ctx.user_id},
                                   {"session_id", ctx.session_id},
                                   {"run_id", ctx.run_id},
                                   {"iteration", ctx.iteration},
                                   {"tool_call_id", ctx.tool_call_id}};
            if (args.contains("format") && args["format"].is_string()) {
                auto f = args["format"].get<std::string>();
                if (f == "plain" || f == "markdown" || f == "html") data["format"] = f;
            }
            if (!ctx.reply_to.is_null()) data["reply_to"] = ctx.reply_to;
            events::NewEvent e{.id = {}, .type = "MessageGenerated", .aggregate_id = ctx.session_id, .data = std::move(data)};
            if (auto s = ctx.record_effect(std::move(e)); !s) return ToolResult::store_error(s.error());
            return ToolResult::ok("sent");
        }};
}

}  // namespace engram::ai
