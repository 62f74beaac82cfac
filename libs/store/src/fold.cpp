#include "engram/store/fold.h"

#include <pqxx/pqxx>

#include "engram/pg/pg.h"
#include "engram/projections/projection.h"

namespace engram::store {
namespace {

std::string scope_condition(pqxx::transaction_base& tx, const FoldScope& scope) {
    std::string sql;
    if (scope.aggregate_id) sql += " AND aggregate_id = " + tx.quote(*scope.aggregate_id);
    if (scope.until_position) sql += " AND position <= " + std::to_string(scope.until_position->value());
    if (scope.until_time) sql += " AND ts <= " + tx.quote(format_rfc3339(*scope.until_time)) + "::timestamptz";
    return sql;
}

}  // namespace

void scan_fold_rows(pqxx::transaction_base& tx, const projections::Projection& p, const FoldScope& scope,
                    const std::function<void(pqxx::result&&)>& on_page, int page_rows) {
    std::string types;
    for (auto t : p.event_types()) types += (types.empty() ? "" : ",") + tx.quote(std::string(t));
    // Within one aggregate, version order is position order, and (aggregate_id, aggregate_version)
    // is an index that yields it.
    tx.exec(
        "DECLARE engram_fold NO SCROLL CURSOR FOR SELECT position, aggregate_id, aggregate_version, type, id, "
        "(extract(epoch FROM ts) * 1000)::bigint, data::text FROM events WHERE type IN (" +
        (types.empty() ? std::string("NULL") : types) + ")" + scope_condition(tx, scope) + " ORDER BY " +
        (scope.aggregate_id ? "aggregate_version" : "position"));
    const std::string fetch = "FETCH FORWARD " + std::to_string(std::max(page_rows, 1)) + " FROM engram_fold";
    for (;;) {
        auto r = tx.exec(fetch);
        if (r.empty()) break;
        bool last = r.size() < static_cast<std::size_t>(page_rows);
        on_page(std::move(r));
        if (last) break;
    }
    tx.exec("CLOSE engram_fold");
}

std::string checkpoints_sql(pqxx::transaction_base& tx, const FoldScope& scope) {
    return "SELECT aggregate_id, max(position), max(aggregate_version) FROM events WHERE true" + scope_condition(tx, scope) +
           " GROUP BY aggregate_id";
}

FoldState::FoldState(const projections::Projection& p) : p_(p) {}

std::int64_t FoldState::add(const pqxx::result& page) {
    std::int64_t last = 0;
    for (const auto& row : page) {
        ++rows_;
        // Each field made once: a pqxx::field copies a reference-counted handle to the result.
        const pqxx::field f_agg = row[1], f_type = row[3], f_id = row[4], f_data = row[6];
        last = row[0].as<std::int64_t>();
        std::string_view agg(f_agg.c_str(), f_agg.size());
        auto m = member_.find(agg);
        if (m == member_.end()) {
            auto a = p_.aggregate_of(agg);
            m = member_.emplace(std::string(agg), a.ok() && *a == agg).first;
        }
        if (!m->second) continue;
        auto it = instances_.find(agg);
        if (it == instances_.end()) it = instances_.emplace(std::string(agg), Instance{p_.initial(agg), 0, 0}).first;
        auto& e = scratch_;
        e.position = GlobalPosition(last);
        e.aggregate_id.assign(agg);
        e.version = AggregateVersion(row[2].as<std::int64_t>());
        e.type.assign(f_type.c_str(), f_type.size());
        e.id = *Uuid::parse(std::string_view(f_id.c_str(), f_id.size()));
        e.timestamp = SysTime(std::chrono::milliseconds(row[5].as<std::int64_t>()));
        // Not parse_json: the value passed it when appended (jsonb prints 1e20 in full, which
        // parse_json would refuse as beyond 64 bits).
        e.data = nlohmann::json::parse(std::string_view(f_data.c_str(), f_data.size()));
        auto next = p_.apply(std::move(it->second.state), e);
        if (next.value("position", std::int64_t{0}) == last) ++folded_;
        it->second.state = std::move(next);
        it->second.position = last;
        it->second.version = e.version.value();
    }
    return last;
}

void FoldState::set_checkpoints(const pqxx::result& rows) {
    for (const auto& row : rows) {
        auto it = instances_.find(std::string_view(row[0].c_str(), row[0].size()));
        if (it == instances_.end()) continue;
        it->second.position = row[1].as<std::int64_t>();
        it->second.version = row[2].as<std::int64_t>();
    }
}

Result<AsOf> fold_as_of(pg::Pool& pool, const projections::Projection& p, const std::string& id, FoldScope scope) {
    auto agg = p.aggregate_of(id);
    if (!agg) return std::move(agg).error();
    scope.aggregate_id = *agg;
    return pool.run([&](pqxx::connection& c) {
        pqxx::read_transaction tx(c);
        FoldState fs(p);
        scan_fold_rows(tx, p, scope, [&](pqxx::result&& page) { fs.add(page); });
        AsOf out;
        auto it = fs.instances().find(id);
        out.state = it == fs.instances().end() ? p.initial(id) : std::move(it->second.state);
        out.position = tx.exec("SELECT coalesce(max(position), 0) FROM events WHERE true" + scope_condition(tx, scope))[0][0]
                           .as<std::int64_t>();
        return out;
    });
}

}  // namespace engram::store
