#include "memory_processor.h"
#include "scheduler.h"

#include "engram/log/log.h"

int main(int argc, char** argv) {
    using namespace engram;
    processor::Options defaults;
    defaults.name = "memory-processor";
    defaults.types = {};  // every event: a projection's checkpoint tracks aggregate versions
    config::Spec extra;
    extra.add({"LLM_BASE_URL", "OpenAI-compatible API base URL (embeddings when EMBEDDINGS_MODEL is set)", "", false,
               config::url({"http", "https"})});
    extra.add({"LLM_API_KEY", "API key for LLM_BASE_URL", "", false, nullptr, true});
    extra.add({"SCHEDULER_POLL_MS", "how often due reminders are looked for (ms); 0 = this instance fires none", "1000", false,
               config::int_range(0, 3600000)});
    extra.add({"EMBEDDINGS_MODEL", "embedding model; unset = the built-in local embedding", "", false, nullptr});
    // Kept alive for the life of the process by the handler's captures.
    static std::unique_ptr<memory_processor::SearchService> search;
    static std::unique_ptr<memory_processor::Scheduler> scheduler;
    int rc = processor::run_main_batched(argc, argv, defaults, extra, [](const config::Values& v) {
        std::shared_ptr<memory::Embedder> emb =
            memory::make_embedder(v.get("LLM_BASE_URL"), v.get("LLM_API_KEY"), v.get("EMBEDDINGS_MODEL"));
        auto conn = pg::connect(v.get("DATABASE_URL"));
        if (!conn) throw std::runtime_error(conn.error().detail);
        memory_processor::migrate(**conn);
        search = std::make_unique<memory_processor::SearchService>(v.get("NATS_URL"), v.get("DATABASE_URL"), emb);
        if (auto s = search->start(); !s) throw std::runtime_error("memory.search: " + s.error().detail);
        log::get("memory-processor")->info("embeddings: {}", emb->name());
        if (auto poll = std::stoll(v.get("SCHEDULER_POLL_MS")); poll > 0) {
            scheduler = std::make_unique<memory_processor::Scheduler>(memory_processor::SchedulerOptions{
                v.get("DATABASE_URL"), v.get("EVENT_STORE_URL"), v.get("ENGRAM_API_TOKEN"), std::chrono::milliseconds(poll)});
            scheduler->start();
        }
        return memory_processor::make_handlers(emb, {v.get("EVENT_STORE_URL"), v.get("ENGRAM_API_TOKEN")});
    });
    if (scheduler) scheduler->stop();  // before the statics it logs through are destroyed
    return rc;
}
