#pragma once
// engram-memory-processor: keeps the `conversation`, `fast_memory` and `reminders` projections and
// the memory search index up to date, appends FastMemoryUpdated when a user's fast memory changes,
// fires due reminders (scheduler.h), and answers `memory.search` over NATS request/reply.
#include "engram/memory/memory.h"
#include "engram/processor/processor.h"

#include <memory>
#include <string>
#include <vector>

namespace engram::nats {
class Connection;
class Subscription;
}  // namespace engram::nats

namespace engram::memory_processor {

inline constexpr const char* kSearchSubject = "memory.search";
inline constexpr const char* kSearchQueue = "memory-processor";

// The types that change something: everything the projections fold, plus MemoryStored. (The
// processor consumes every event anyway, so aggregate versions arrive without holes.)
std::vector<std::string> handled_types();

struct StoreAccess {
    std::string url;    // EVENT_STORE_URL
    std::string token;  // ENGRAM_API_TOKEN
};
// projection_state (the persisted projections, one row per instance with the position it reflects)
// and the memory index.
void migrate(pqxx::connection& c);
processor::Handler make_handler(std::shared_ptr<memory::Embedder> embedder, StoreAccess store);
// The same, plus the batch handler the runtime uses for consecutive events of one aggregate.
processor::Handlers make_handlers(std::shared_ptr<memory::Embedder> embedder, StoreAccess store);

// memory.search: request {"user_id", "query", "limit"?} -> {"results": [{"memory_id","text","score"}...]}
// or {"error", "detail"}. Subscribed in a queue group, so several instances share the load.
class SearchService {
public:
    SearchService(std::string nats_url, std::string database_url, std::shared_ptr<memory::Embedder> embedder);
    ~SearchService();
    Status start();

private:
    std::string nats_url_;
    std::unique_ptr<pg::Pool> db_;
    std::shared_ptr<memory::Embedder> embedder_;
    std::unique_ptr<nats::Connection> nc_;
    std::unique_ptr<nats::Subscription> sub_;
};

}  // namespace engram::memory_processor
