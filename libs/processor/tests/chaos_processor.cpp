// chaos-processor: the processor processor_chaos_tests starts several times as real processes and
// then kills, freezes, terminates and cuts off from its servers. Its handler's effect is one row per
// event in chaos_effects, written by an idempotent INSERT in a transaction fenced by the partition's
// lease, so the test can tell from the table alone whether an event was lost, applied twice, applied
// out of order or committed by an instance that had lost the partition. Every attempt is counted in
// chaos_attempts (unfenced) so the test also sees the re-handling the failures cause.
//
// Settings: the shared processor settings (config_spec; the tick is a sixth of
// CHAOS_PROCESSOR_LEASE_TTL_MS), plus CHAOS_HANDLER_MS (sleep before the effect, so that kills and
// freezes land while handlers run) and CHAOS_FENCED_HOLD_MS (sleep inside the fenced transaction,
// holding the lease row's share lock, so that a freeze lands while the lock is held).
#include "engram/log/log.h"
#include "engram/processor/processor.h"

#include <pqxx/pqxx>

#include <chrono>
#include <string>
#include <thread>
#include <unistd.h>

using namespace engram;

namespace {

constexpr const char* kName = "chaos-processor";

// Several instances start at once: the advisory lock keeps their CREATE TABLE IF NOT EXISTS from
// racing on the catalog (a unique violation on pg_type otherwise).
constexpr const char* kMigration = R"SQL(
SELECT pg_advisory_xact_lock(hashtext('engram.chaos-processor.migrate'));
CREATE TABLE IF NOT EXISTS chaos_effects (
    seq bigserial,
    aggregate_id text NOT NULL,
    version bigint NOT NULL,
    position bigint NOT NULL,
    member text,
    pid int NOT NULL,
    partition int NOT NULL,
    epoch bigint NOT NULL,
    lease_owner text,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_id, version)
);
CREATE TABLE IF NOT EXISTS chaos_attempts (
    aggregate_id text NOT NULL,
    version bigint NOT NULL,
    member text,
    pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
)SQL";

// This process's member id, looked up by pid on every write: the runtime may join again under a
// new id after losing its membership, and the row must name the id it had when it wrote.
constexpr const char* kMemberByPid =
    "(SELECT member::text FROM processor_members WHERE processor = $1 AND pid = $2 ORDER BY started_at DESC LIMIT 1)";

// A database failure the runtime should retry rather than park: connection loss (08, 57P0x),
// too many connections / out of resources (53), and serialization failures or deadlocks (40).
bool transient_sqlstate(const std::string& st) {
    for (const char* p : {"08", "57", "53", "40"})
        if (st.rfind(p, 0) == 0) return true;
    return false;
}

template <class F>
Status guarded(F&& body) {
    try {
        return body();
    } catch (const pqxx::broken_connection& e) {
        return processor::transient(Error::make("database", e.what()));
    } catch (const pqxx::in_doubt_error& e) {
        // The commit may or may not have happened: the retry's ON CONFLICT DO NOTHING settles it.
        return processor::transient(Error::make("database", e.what()));
    } catch (const pqxx::sql_error& e) {
        if (transient_sqlstate(e.sqlstate()) || pg::is_connection_error(e))
            return processor::transient(Error::make("database", e.what()));
        return Error::make("sql", e.what());
    }
}

Status handle(processor::Context& ctx, std::chrono::milliseconds handler_time, std::chrono::milliseconds fenced_hold) {
    const auto& e = ctx.event();
    const int pid = static_cast<int>(::getpid());
    auto counted = guarded([&]() -> Status {
        auto r = ctx.db().run([&](pqxx::connection& c) {
            pqxx::work tx(c);
            tx.exec_params(std::string("INSERT INTO chaos_attempts (aggregate_id, version, member, pid) VALUES ($3, $4, ") +
                               kMemberByPid + ", $2)",
                           kName, pid, e.aggregate_id, e.version.value());
            tx.commit();
            return 0;
        });
        if (!r) return std::move(r).error();
        return ok();
    });
    if (!counted) return counted;

    if (handler_time.count() > 0) std::this_thread::sleep_for(handler_time);

    return guarded([&]() -> Status {
        auto r = ctx.db().run([&](pqxx::connection& c) -> Status {
            pqxx::work tx(c);
            if (auto f = ctx.fence(tx); !f) return f;
            // The lease row is share-locked by the fence: what this reads is the claim the commit is
            // fenced by, so the test can check every row against the lease history.
            auto lease = tx.exec_params("SELECT owner::text, epoch FROM processor_leases WHERE processor = $1 AND partition = $2",
                                        kName, ctx.partition());
            if (lease.empty()) return Error::make("sql", "no lease row for partition " + std::to_string(ctx.partition()));
            if (fenced_hold.count() > 0) std::this_thread::sleep_for(fenced_hold);
            tx.exec_params(std::string("INSERT INTO chaos_effects (aggregate_id, version, position, member, pid, partition, "
                                       "epoch, lease_owner) VALUES ($3, $4, $5, ") +
                               kMemberByPid + ", $2, $6, $7, NULLIF($8, '')) ON CONFLICT (aggregate_id, version) DO NOTHING",
                           kName, pid, e.aggregate_id, e.version.value(), e.position.value(), ctx.partition(),
                           lease[0][1].as<std::int64_t>(), std::string(lease[0][0].c_str()));
            tx.commit();
            return ok();
        });
        if (!r) return std::move(r).error();
        return *r;
    });
}

}  // namespace

int main(int argc, char** argv) {
    processor::Options defaults;
    defaults.name = kName;
    defaults.types = {"ChaosTick"};
    defaults.concurrency = 4;
    defaults.drain_timeout = std::chrono::seconds(10);
    config::Spec extra;
    extra.add({"CHAOS_HANDLER_MS", "milliseconds each attempt sleeps before writing its effect", "0", false,
               config::int_range(0, 60000)});
    extra.add({"CHAOS_FENCED_HOLD_MS", "milliseconds each effect's transaction sleeps after its fence, before its insert", "0",
               false, config::int_range(0, 60000)});
    return processor::run_main(argc, argv, defaults, extra, [](const config::Values& v) -> processor::Handler {
        auto conn = pg::connect(v.get("DATABASE_URL"));
        if (!conn) throw std::runtime_error(conn.error().detail);
        {
            pqxx::work tx(**conn);
            tx.exec(kMigration);
            tx.commit();
        }
        const std::chrono::milliseconds handler_time(v.get_int("CHAOS_HANDLER_MS"));
        const std::chrono::milliseconds fenced_hold(v.get_int("CHAOS_FENCED_HOLD_MS"));
        log::get(kName)->info("pid {}, handler sleeps {} ms", ::getpid(), handler_time.count());
        return [handler_time, fenced_hold](processor::Context& ctx) { return handle(ctx, handler_time, fenced_hold); };
    });
}
