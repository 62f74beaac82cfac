// engram-ai-processor: the agent loop on TriggerReceived / MessageReceived / SessionForked (see agent.h).
#include <cstdlib>

#include "agent.h"
#include "mcp.h"
#include "engram/log/log.h"
#include "engram/nats/nats.h"

int main(int argc, char** argv) {
    using namespace engram;
    processor::Options defaults;
    defaults.name = "ai-processor";
    defaults.types = {"TriggerReceived", "MessageReceived", "SessionForked"};
    defaults.concurrency = 4;

    config::Spec extra;
    extra.add({"LLM_BASE_URL",
               "OpenAI-compatible chat-completions base URL (e.g. https://api.openai.com/v1); "
               "unset = the offline provider (rule-based, no model)",
               "", false, config::url({"http", "https"})});
    extra.add({"LLM_API_KEY", "API key for LLM_BASE_URL (sent as a bearer token)", "", false, nullptr, true});
    extra.add({"LLM_MODEL", "chat model", "gpt-4.1", false, nullptr});
    extra.add({"LLM_TIMEOUT_MS", "timeout of one model call attempt (ms)", "60000", false, config::int_range(100, 600000)});
    extra.add({"LLM_MAX_RETRIES", "retries of a model call on timeouts, 429 and 5xx", "4", false, config::int_range(0, 20)});
    extra.add({"LLM_STREAM",
               "true = ask LLM_BASE_URL for streamed answers and publish their pieces live on NATS "
               "(engram.deltas.<session>, for the web chat); the log keeps the same events either way",
               "true", false, config::one_of({"true", "false"})});
    extra.add({"AI_MAX_ITERATIONS", "model calls per run at most", "15", false, config::int_range(1, 100)});
    extra.add({"AI_RECALL_TIMEOUT_MS", "timeout of the recall tool's memory.search request (ms)", "5000", false,
               config::int_range(100, 60000)});

    extra.add({"AI_DOUBLE_TEXTING",
               "messages sent in a burst: merge = one run answers them together (recorded in AIProcessingStarted), "
               "queue = a run each",
               "merge", false, [](const std::string& v) -> std::optional<std::string> {
                   if (v == "merge" || v == "queue") return std::nullopt;
                   return "must be merge or queue";
               }});
    extra.add({"AI_DOUBLE_TEXTING_DEBOUNCE_MS", "with merge: how long a new message waits for the rest of its burst (ms)", "1500",
               false, config::int_range(0, 30000)});
    extra.add({"MCP_SERVERS",
               "MCP servers whose tools the agent may call, as JSON: {\"<name>\": {\"command\": \"node\", \"args\": "
               "[\"server.js\", \"stdio\"], \"env\": {}}} (stdio) or {\"<name>\": {\"url\": \"https://host/mcp\", "
               "\"headers\": {}}} (Streamable HTTP); their tools are offered as <name>__<tool>",
               "", false, [](const std::string& v) -> std::optional<std::string> {
                   auto p = ai::parse_mcp_servers(v);
                   if (p) return std::nullopt;
                   return p.error().detail;
               }});
    extra.add({"MCP_TOOL_TIMEOUT_MS", "timeout of one MCP tool call (ms); past it the model sees a tool error", "30000", false,
               config::int_range(100, 600000)});

    static std::unique_ptr<ai::Agent> agent;
    static std::unique_ptr<ai::McpToolbox> mcp;
    return processor::run_main(argc, argv, defaults, extra, [](const config::Values& v) {
        auto log = log::get("ai-processor");
        ai::AgentOptions o;
        o.event_store_url = v.get("EVENT_STORE_URL");
        o.api_token = v.get("ENGRAM_API_TOKEN");
        o.max_iterations = static_cast<int>(v.get_int("AI_MAX_ITERATIONS"));
        o.recall_timeout = std::chrono::milliseconds(v.get_int("AI_RECALL_TIMEOUT_MS"));
        o.double_texting = v.get("AI_DOUBLE_TEXTING");
        o.debounce = std::chrono::milliseconds(v.get_int("AI_DOUBLE_TEXTING_DEBOUNCE_MS"));
        if (v.has("LLM_BASE_URL")) {
            llm::OpenAIOptions base;
            base.base_url = v.get("LLM_BASE_URL");
            base.api_key = v.get("LLM_API_KEY");
            base.model = v.get("LLM_MODEL");
            base.timeout = std::chrono::milliseconds(v.get_int("LLM_TIMEOUT_MS"));
            base.max_retries = static_cast<int>(v.get_int("LLM_MAX_RETRIES"));
            base.stream = v.get("LLM_STREAM") == "true";
            o.provider_kind = "openai-compatible";
            o.model = base.model;
            o.make_provider = [base](const std::string& model_override) {
                auto opts = base;
                if (!model_override.empty()) opts.model = model_override;
                return llm::make_openai(opts);
            };
            log->info("model: {} at {} (openai-compatible{})", base.model, base.base_url, base.stream ? ", streamed" : "");
        } else {
            std::shared_ptr<llm::Provider> offline = llm::make_offline();
            // The offline provider is stateless and thread-safe: one shared instance behind a thin owner.
            struct Shared : llm::Provider {
                std::shared_ptr<llm::Provider> p;
                std::string name() const override { return p->name(); }
                std::string model() const override { return p->model(); }
                Result<llm::Completion> complete(const llm::Request& r) override { return p->complete(r); }
            };
            o.provider_kind = "offline";
            o.model = offline->model();
            o.make_provider = [offline](const std::string&) {
                auto s = std::make_unique<Shared>();
                s->p = offline;
                return std::unique_ptr<llm::Provider>(std::move(s));
            };
            log->warn(
                "using the offline provider (rule-based, no model): set LLM_BASE_URL (and LLM_API_KEY, "
                "LLM_MODEL) to use an OpenAI-compatible model");
        }
        nats::ConnectOptions nc;
        nc.url = v.get("NATS_URL");
        nc.name = "ai-processor-recall";
        auto conn = nats::Connection::connect(nc);
        if (!conn) throw std::runtime_error("NATS (recall): " + conn.error().detail);
        o.nats = std::shared_ptr<nats::Connection>(std::move(*conn));
        if (v.has("LLM_BASE_URL") && v.get("LLM_STREAM") == "true") {
            // Best effort: a piece that cannot be published is simply not shown live.
            o.publish_delta = [nc = o.nats](const std::string& subject, const std::string& data) {
                (void)nc->publish(subject, data);
            };
        }
        if (auto servers = ai::parse_mcp_servers(v.get("MCP_SERVERS")); servers && !servers->empty()) {
            mcp = std::make_unique<ai::McpToolbox>(std::move(*servers),
                                                   std::chrono::milliseconds(v.get_int("MCP_TOOL_TIMEOUT_MS")));
            for (const auto& problem : mcp->start()) log->warn("{} (retried when the agent next lists its tools)", problem);
            auto tools = mcp->tools();
            std::string names;
            for (const auto& t : tools) names += (names.empty() ? "" : ", ") + t.name;
            log->info("MCP: {} tool(s) offered to the model: {}", tools.size(), names.empty() ? "(none yet)" : names);
            ai::set_external_tools([] { return mcp->tools(); });
        }
        agent = std::make_unique<ai::Agent>(std::move(o));
        return agent->handler();
    });
}
