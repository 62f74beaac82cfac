// recall: searches the user's memories through the memory processor (NATS request/reply on
// memory.search, queue group, timeout) and records MemoryRecalled on the session. On a re-run after a
// crash the recorded results are reused (the search is not asked again).
#include "tools.h"

#include "engram/core/json.h"
#include "engram/nats/nats.h"

namespace engram::ai {

namespace {

nlohmann::json for_model(const nlohmann::json& results) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& r : results) out.push_back({{"text", r.value("text", "")}, {"score", r.value("score", 0.0)}});
    return {{"results", out}};
}

}  // namespace

Tool make_recall_tool() {
    return Tool{
        "recall",
        "Search the user's long-term memories. Returns the best matches with a relevance score.",
        {{"type", "object"},
         {"properties",
          {{"query", {{"type", "string"}, {"description", "What to look for."}}},
           {"limit", {{"type", "integer"}, {"minimum", 1}, {"maximum", 20}, {"description", "How many results (default 5)."}}}}},
         {"required", {"query"}}},
        [](ToolContext& ctx, const nlohmann::json& args) -> ToolResult {
            if (ctx.recorded_effect && ctx.recorded_effect->type == "MemoryRecalled")
                return ToolResult::ok(for_model(ctx.recorded_effect->data.value("results", nlohmann::json::array())));
            auto query = string_arg(args, "query");
            if (!query) return ToolResult::error("recall needs a non-empty string argument 'query'");
            int limit = 5;
            if (args.contains("limit") && args["limit"].is_number_integer()) limit = std::clamp(args["limit"].get<int>(), 1, 20);
            if (!ctx.nats) return ToolResult::error("recall: no NATS connection (memory search unavailable)");
            nlohmann::json req = {{"user_id", ctx.user_id}, {"query", *query}, {"limit", limit}};
            auto t0 = std::chrono::steady_clock::now();
            auto reply = ctx.nats->request("memory.search", req.dump(), ctx.recall_timeout);
            if (!reply) return ToolResult::error("recall: memory search failed: " + reply.error().detail);
            auto parsed = parse_json(reply->data, "the memory search's answer");
            if (!parsed) return ToolResult::error("recall: " + parsed.error().detail);
            auto& body = *parsed;
            if (!body.is_object()) return ToolResult::error("recall: memory search answered something that is not a JSON object");
            if (body.contains("error"))
                return ToolResult::error("recall: memory search failed: " + body.value("detail", body["error"].dump()));
            nlohmann::json results = nlohmann::json::array();
            for (const auto& r : body.value("results", nlohmann::json::array())) {
                if (!r.is_object() || !r.contains("memory_id") || !r["memory_id"].is_string() || !r.contains("text") ||
                    !r["text"].is_string() || !r.contains("score") || !r["score"].is_number())
                    continue;
                results.push_back(r);
            }
            auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
            events::NewEvent e{.id = {},
                               .type = "MemoryRecalled",
                               .aggregate_id = ctx.session_id,
                               .data = {{"query", *query},
                                        {"results", results},
                                        {"user_id", ctx.user_id},
                                        {"limit", limit},
                                        {"took_ms", took},
                                        {"run_id", ctx.run_id},
                                        {"iteration", ctx.iteration},
                                        {"tool_call_id", ctx.tool_call_id}}};
            if (ctx.user_id.empty()) e.data.erase("user_id");
            if (auto s = ctx.record_effect(std::move(e)); !s) return ToolResult::store_error(s.error());
            return ToolResult::ok(for_model(results));
        }};
}

}  // namespace engram::ai
