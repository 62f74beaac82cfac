#include "engram/store/reader.h"

#include "engram/pg/pg.h"
#include "rows.h"

namespace engram::store {
using rows::kColumns;
using rows::to_event;
using rows::to_events;

std::string type_condition(const std::string& glob, const std::function<std::string(const std::string&)>& quote) {
    if (glob == "*") return "TRUE";
    if (!glob.empty() && glob.back() == '*') {
        std::string prefix;
        for (char c : glob.substr(0, glob.size() - 1)) {
            if (c == '%' || c == '_' || c == '\\') prefix += '\\';
            prefix += c;
        }
        return "type LIKE " + quote(prefix + "%");
    }
    return "type = " + quote(glob);
}

Result<std::vector<events::Event>> Reader::read(const ReadQuery& q) {
    return pool_.run([&](pqxx::connection& c) {
        pqxx::read_transaction tx(c);
        auto quote = [&](const std::string& s) { return tx.quote(s); };
        std::string sql = std::string("SELECT ") + kColumns + " FROM events WHERE position > " + std::to_string(q.after.value());
        if (q.type_glob) sql += " AND " + type_condition(*q.type_glob, quote);
        if (q.aggregate_id) sql += " AND aggregate_id = " + tx.quote(*q.aggregate_id);
        if (q.until_position) sql += " AND position <= " + std::to_string(q.until_position->value());
        if (q.until_time) sql += " AND ts <= " + tx.quote(format_rfc3339(*q.until_time)) + "::timestamptz";
        sql += " ORDER BY position LIMIT " + std::to_string(q.limit);
        return to_events(tx.exec(sql));
    });
}

Result<std::optional<events::Event>> Reader::get(const Uuid& id) {
    return pool_.run([&](pqxx::connection& c) -> std::optional<events::Event> {
        pqxx::read_transaction tx(c);
        auto r = tx.exec(std::string("SELECT ") + kColumns + " FROM events WHERE id = '" + id.str() + "'");
        if (r.empty()) return std::nullopt;
        return to_event(r[0]);
    });
}

Result<std::vector<events::Event>> Reader::aggregate(const std::string& aggregate_id, AggregateVersion from, int limit) {
    return pool_.run([&](pqxx::connection& c) {
        pqxx::read_transaction tx(c);
        return to_events(tx.exec(std::string("SELECT ") + kColumns + " FROM events WHERE aggregate_id = " +
                                 tx.quote(aggregate_id) + " AND aggregate_version >= " + std::to_string(from.value()) +
                                 " ORDER BY aggregate_version LIMIT " + std::to_string(limit)));
    });
}

Result<GlobalPosition> Reader::head() {
    return pool_.run([&](pqxx::connection& c) {
        pqxx::read_transaction tx(c);
        return GlobalPosition(tx.exec("SELECT coalesce(max(position), 0) FROM events")[0][0].as<std::int64_t>());
    });
}

Status Reader::ping() {
    auto r = pool_.run([&](pqxx::connection& c) {
        pqxx::nontransaction tx(c);
        tx.exec("SELECT 1");
        return Ok{};
    });
    if (!r) return std::move(r).error();
    return ok();
}

}  // namespace engram::store
