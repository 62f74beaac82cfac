#pragma once
// The memory search index: what the assistant stored about a user (MemoryStored events), searchable
// by words (PostgreSQL full-text search) and by meaning-like similarity (embeddings), fused into one
// ranking. The index is a projection of the log: rebuildable from MemoryStored events alone.
#include "engram/core/result.h"
#include "engram/events/event.h"

#include <pqxx/pqxx>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace engram::pg {
class Pool;
}

namespace engram::memory {

inline constexpr std::size_t kLocalDims = 256;

// The built-in embedding: hashed word stems and character trigrams, L2-normalised. Deterministic,
// no model needed; similar spellings and shared words land close together.
std::vector<float> local_embedding(std::string_view text);
double cosine(const std::vector<float>& a, const std::vector<float>& b);

class Embedder {
public:
    virtual ~Embedder() = default;
    virtual Result<std::vector<float>> embed(std::string_view text) = 0;
    virtual std::string name() const = 0;
};
// OpenAI-compatible POST {base_url}/embeddings when base_url and model are set; the local one otherwise.
std::unique_ptr<Embedder> make_embedder(const std::string& base_url, const std::string& api_key, const std::string& model);

struct Hit {
    std::string memory_id;
    std::string text;
    double score = 0;       // fused (reciprocal rank fusion)
    double text_rank = 0;   // full-text rank (0 when no word matched)
    double similarity = 0;  // cosine similarity of the embeddings
};

// Creates the index table if missing (idempotent).
void migrate(pqxx::connection& c);
// Adds one MemoryStored event; a second call for the same event changes nothing.
void index(pqxx::transaction_base& tx, const events::Event& memory_stored, const std::vector<float>& embedding);
// Empties the index (rebuild).
void clear(pqxx::transaction_base& tx);
// The user's memories best matching `query`: hybrid ranking of full-text and vector similarity.
Result<std::vector<Hit>> search(pg::Pool& db, Embedder& embedder, const std::string& user_id, const std::string& query,
                                int limit);

}  // namespace engram::memory
