#include "membership.h"

#include "engram/events/event.h"
#include "engram/pg/pg.h"

#include <pqxx/pqxx>

#include <algorithm>

namespace engram::processor {

namespace {

// A 64-bit mix of (member, partition): FNV-1a over both, then a finaliser so that close member
// ids do not produce close weights.
std::uint64_t weight(const std::string& member, int partition) {
    std::uint64_t h = 1469598103934665603ull;
    auto feed = [&](unsigned char c) {
        h ^= c;
        h *= 1099511628211ull;
    };
    for (unsigned char c : member) feed(c);
    feed(0);
    for (int i = 0; i < 4; ++i) feed(static_cast<unsigned char>((partition >> (8 * i)) & 0xff));
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

}  // namespace

std::vector<std::string> assign(const std::vector<std::string>& members, int partitions) {
    std::vector<std::string> out(static_cast<std::size_t>(std::max(partitions, 0)));
    if (members.empty()) return out;
    // Rendezvous with bounded loads: each partition goes to the member of highest weight that has
    // fewer than ceil(P/N) partitions yet, so shares differ by at most one (plain rendezvous
    // leaves 16 partitions split 11/5 between two members often enough to halve a benchmark).
    const auto cap = (static_cast<std::size_t>(partitions) + members.size() - 1) / members.size();
    std::vector<std::size_t> load(members.size(), 0);
    for (int p = 0; p < partitions; ++p) {
        std::size_t best = members.size();
        std::uint64_t best_w = 0;
        for (std::size_t m = 0; m < members.size(); ++m) {
            if (load[m] >= cap) continue;
            auto w = weight(members[m], p);
            if (best == members.size() || w > best_w || (w == best_w && members[m] < members[best])) {
                best = m;
                best_w = w;
            }
        }
        ++load[best];
        out[static_cast<std::size_t>(p)] = members[best];
    }
    return out;
}

Membership::Membership(std::string database_url, std::string processor, std::string member, std::chrono::milliseconds ttl)
    : url_(std::move(database_url)),
      processor_(std::move(processor)),
      member_(std::move(member)),
      ttl_(ttl),
      watchdog_(std::make_unique<pg::Watchdog>()) {}

Membership::~Membership() = default;

Result<pqxx::connection*> Membership::conn() {
    if (c_ && c_->is_open()) return c_.get();
    c_.reset();
    auto c = pg::connect(url_);
    if (!c) return std::move(c).error();
    c_ = std::move(*c);
    return c_.get();
}

// Every lease statement is bounded by half a lease (pg::Watchdog): a frozen or unreachable
// primary must not hold the coordinator past the point where its claims lapse anyway.
#define ENGRAM_MEMBERSHIP_TRY(expr)                                         \
    try {                                                                   \
        auto guard = watchdog_->arm(**c, ttl_ / 2);                         \
        expr                                                                \
    } catch (const std::exception& e) {                                     \
        if (pg::is_connection_error(e)) c_.reset();                         \
        return Error::make("database", std::string("leases: ") + e.what()); \
    }

Result<std::vector<std::string>> Membership::heartbeat(const std::string& host, int pid, const std::string& listen) {
    auto c = conn();
    if (!c) return std::move(c).error();
    ENGRAM_MEMBERSHIP_TRY({
        pqxx::nontransaction tx(**c);
        auto ttl = std::to_string(ttl_.count());
        tx.exec_params(
            "INSERT INTO processor_members (processor, member, host, pid, listen, expires_at) "
            "VALUES ($1, $2::uuid, $3, $4, $5, now() + $6::bigint * interval '1 millisecond') "
            "ON CONFLICT (processor, member) DO UPDATE SET heartbeat_at = now(), expires_at = excluded.expires_at, "
            "listen = excluded.listen",
            processor_, member_, host, pid, listen, ttl);
        // Rows of members gone for an hour are of no use even to `engram processors`.
        tx.exec_params("DELETE FROM processor_members WHERE processor = $1 AND expires_at < now() - interval '1 hour'",
                       processor_);
        auto rows = tx.exec_params(
            "SELECT member::text FROM processor_members WHERE processor = $1 AND expires_at > now() ORDER BY member", processor_);
        std::vector<std::string> out;
        for (const auto& r : rows) out.push_back(r[0].as<std::string>());
        return out;
    })
}

Result<std::vector<LeaseRow>> Membership::leases() {
    auto c = conn();
    if (!c) return std::move(c).error();
    ENGRAM_MEMBERSHIP_TRY({
        pqxx::nontransaction tx(**c);
        auto rows = tx.exec_params(
            "SELECT partition, coalesce(owner::text, ''), epoch, owner IS NOT NULL AND expires_at > now(), checkpoint "
            "FROM processor_leases WHERE processor = $1 ORDER BY partition",
            processor_);
        std::vector<LeaseRow> out;
        for (const auto& r : rows)
            out.push_back(
                {r[0].as<int>(), r[1].as<std::string>(), r[2].as<std::int64_t>(), r[3].as<bool>(), r[4].as<std::uint64_t>()});
        return out;
    })
}

Result<std::optional<Claimed>> Membership::claim(int partition) {
    auto c = conn();
    if (!c) return std::move(c).error();
    ENGRAM_MEMBERSHIP_TRY({
        {
            pqxx::nontransaction nt(**c);
            nt.exec_params("INSERT INTO processor_leases (processor, partition) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                           processor_, partition);
        }
        // FOR UPDATE first: it waits for the old owner's fenced transactions (FOR KEY SHARE), which
        // a plain UPDATE of these columns would not.
        pqxx::work tx(**c);
        tx.exec("SET LOCAL lock_timeout = '2s'");
        tx.exec_params("SELECT 1 FROM processor_leases WHERE processor = $1 AND partition = $2 FOR UPDATE", processor_,
                       partition);
        auto rows = tx.exec_params(
            "UPDATE processor_leases SET owner = $3::uuid, epoch = epoch + 1, "
            "expires_at = now() + $4::bigint * interval '1 millisecond', updated_at = now() "
            "WHERE processor = $1 AND partition = $2 AND (owner IS NULL OR expires_at IS NULL OR expires_at <= now()) "
            "RETURNING epoch, checkpoint",
            processor_, partition, member_, std::to_string(ttl_.count()));
        if (rows.empty()) {
            tx.commit();
            return std::optional<Claimed>();
        }
        Claimed out;
        out.epoch = rows[0][0].as<std::int64_t>();
        out.checkpoint = rows[0][1].as<std::uint64_t>();
        tx.commit();
        return std::optional<Claimed>(out);
    })
}

Result<bool> Membership::renew(int partition, std::int64_t epoch, std::uint64_t checkpoint, std::int64_t position,
                               std::uint64_t pending) {
    auto c = conn();
    if (!c) return std::move(c).error();
    ENGRAM_MEMBERSHIP_TRY({
        pqxx::nontransaction tx(**c);
        // A handler's fenced commit share-locks the row: wait for it briefly, never for a whole lease.
        tx.exec("SET lock_timeout = '2s'");
        auto rows = tx.exec_params(
            "UPDATE processor_leases SET expires_at = now() + $5::bigint * interval '1 millisecond', updated_at = now(), "
            "checkpoint = greatest(checkpoint, $4), position = CASE WHEN $4 >= checkpoint THEN $6 ELSE position END, "
            "pending = $7 "
            "WHERE processor = $1 AND partition = $2 AND owner = $3::uuid AND epoch = $8 AND expires_at > now()",
            processor_, partition, member_, static_cast<std::int64_t>(checkpoint), std::to_string(ttl_.count()), position,
            static_cast<std::int64_t>(pending), epoch);
        return rows.affected_rows() == 1;
    })
}

Result<bool> Membership::release(int partition, std::int64_t epoch, std::uint64_t checkpoint, std::int64_t position) {
    auto c = conn();
    if (!c) return std::move(c).error();
    ENGRAM_MEMBERSHIP_TRY({
        pqxx::nontransaction tx(**c);
        tx.exec("SET lock_timeout = '5s'");
        auto rows = tx.exec_params(
            "UPDATE processor_leases SET owner = NULL, expires_at = NULL, updated_at = now(), "
            "checkpoint = greatest(checkpoint, $4), position = CASE WHEN $4 >= checkpoint THEN $5 ELSE position END "
            "WHERE processor = $1 AND partition = $2 AND owner = $3::uuid AND epoch = $6",
            processor_, partition, member_, static_cast<std::int64_t>(checkpoint), position, epoch);
        return rows.affected_rows() == 1;
    })
}

Status Membership::leave() {
    auto c = conn();
    if (!c) return std::move(c).error();
    ENGRAM_MEMBERSHIP_TRY({
        pqxx::nontransaction tx(**c);
        tx.exec_params("DELETE FROM processor_members WHERE processor = $1 AND member = $2::uuid", processor_, member_);
        return ok();
    })
}

}  // namespace engram::processor
