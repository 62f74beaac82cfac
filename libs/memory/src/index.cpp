#include "engram/memory/memory.h"
#include "engram/pg/pg.h"

#include <algorithm>
#include <cstdlib>
#include <unordered_map>

namespace engram::memory {
namespace {

constexpr int kCandidates = 50;    // per ranking, before fusion
constexpr int kRrfK = 60;          // reciprocal rank fusion constant
constexpr int kMaxScanned = 5000;  // most recent memories compared by vector per search

std::string array_literal(const std::vector<float>& v) {
    std::string s = "{";
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (i) s += ',';
        s += fmt::format("{:.6g}", v[i]);
    }
    return s + "}";
}

std::vector<float> parse_array(const char* s) {
    std::vector<float> v;
    if (*s == '{') ++s;
    while (*s && *s != '}') {
        char* end = nullptr;
        v.push_back(std::strtof(s, &end));
        if (end == s) break;
        s = end;
        if (*s == ',') ++s;
    }
    return v;
}

}  // namespace

void migrate(pqxx::connection& c) {
    pqxx::work tx(c);
    tx.exec("SELECT pg_advisory_xact_lock(hashtext('engram:memory_index:migrate'))");
    tx.exec(R"SQL(
        CREATE TABLE IF NOT EXISTS memory_index (
            memory_id  uuid PRIMARY KEY,
            user_id    text NOT NULL,
            text       text NOT NULL,
            importance real NOT NULL DEFAULT 0.5,
            tags       jsonb NOT NULL DEFAULT '[]',
            tsv        tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
            embedding  real[] NOT NULL,
            position   bigint NOT NULL
        );
        CREATE INDEX IF NOT EXISTS memory_index_user ON memory_index (user_id, position);
        CREATE INDEX IF NOT EXISTS memory_index_tsv ON memory_index USING gin (tsv);
    )SQL");
    tx.commit();
}

void index(pqxx::transaction_base& tx, const events::Event& e, const std::vector<float>& embedding) {
    std::string user = e.data.value("user_id", "");
    if (user.empty()) user = e.aggregate_id;
    double importance =
        e.data.contains("importance") && e.data["importance"].is_number() ? e.data["importance"].get<double>() : 0.5;
    auto tags = e.data.contains("tags") ? e.data["tags"] : nlohmann::json::array();
    tx.exec("INSERT INTO memory_index (memory_id, user_id, text, importance, tags, embedding, position) VALUES ('" + e.id.str() +
            "'," + tx.quote(user) + "," + tx.quote(e.data.value("text", "")) + "," + std::to_string(importance) + "," +
            tx.quote(tags.dump()) + "," + tx.quote(array_literal(embedding)) + "::real[]," + std::to_string(e.position.value()) +
            ") ON CONFLICT (memory_id) DO NOTHING");
}

void clear(pqxx::transaction_base& tx) { tx.exec("DELETE FROM memory_index"); }

Result<std::vector<Hit>> search(pg::Pool& db, Embedder& embedder, const std::string& user_id, const std::string& query,
                                int limit) {
    auto qv = embedder.embed(query);
    if (!qv) return std::move(qv).error();
    return db.run([&](pqxx::connection& c) {
        pqxx::read_transaction tx(c);
        std::unordered_map<std::string, Hit> hits;
        std::vector<std::string> by_text, by_vector;
        // Words: any query word may match (OR), ranked by ts_rank.
        auto r = tx.exec(
            "SELECT memory_id::text, text, ts_rank(tsv, q) FROM memory_index, "
            "(SELECT nullif(replace(plainto_tsquery('english', " +
            tx.quote(query) +
            ")::text, '&', '|'), '')::tsquery AS q) qq "
            "WHERE user_id = " +
            tx.quote(user_id) + " AND q IS NOT NULL AND tsv @@ q ORDER BY 3 DESC LIMIT " + std::to_string(kCandidates));
        for (const auto& row : r) {
            auto& h = hits[row[0].c_str()];
            h.memory_id = row[0].c_str();
            h.text = row[1].c_str();
            h.text_rank = row[2].as<double>();
            by_text.push_back(h.memory_id);
        }
        // Meaning: cosine similarity over the user's most recent memories.
        auto v = tx.exec("SELECT memory_id::text, text, embedding FROM memory_index WHERE user_id = " + tx.quote(user_id) +
                         " ORDER BY position DESC LIMIT " + std::to_string(kMaxScanned));
        std::vector<std::pair<double, std::string>> sims;
        for (const auto& row : v) {
            auto emb = parse_array(row[2].c_str());
            double s = cosine(*qv, emb);
            auto& h = hits[row[0].c_str()];
            h.memory_id = row[0].c_str();
            h.text = row[1].c_str();
            h.similarity = s;
            sims.emplace_back(s, h.memory_id);
        }
        std::sort(sims.begin(), sims.end(), [](auto& a, auto& b) { return a.first > b.first; });
        for (std::size_t i = 0; i < sims.size() && i < static_cast<std::size_t>(kCandidates); ++i)
            if (sims[i].first > 0) by_vector.push_back(sims[i].second);
        // Reciprocal rank fusion: robust to the two scores living on different scales.
        for (std::size_t i = 0; i < by_text.size(); ++i) hits[by_text[i]].score += 1.0 / (kRrfK + 1 + i);
        for (std::size_t i = 0; i < by_vector.size(); ++i) hits[by_vector[i]].score += 1.0 / (kRrfK + 1 + i);
        std::vector<Hit> out;
        for (auto& [_, h] : hits)
            if (h.score > 0) out.push_back(h);
        std::sort(out.begin(), out.end(),
                  [](const Hit& a, const Hit& b) { return a.score != b.score ? a.score > b.score : a.memory_id < b.memory_id; });
        if (out.size() > static_cast<std::size_t>(limit)) out.resize(limit);
        return out;
    });
}

}  // namespace engram::memory
