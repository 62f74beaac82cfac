// The runtime's tables. Leases and membership are rows (not advisory locks): they survive a
// PostgreSQL failover with the data, and every fenced commit can check them in its own transaction.
#include "engram/processor/processor.h"

#include <pqxx/pqxx>

namespace engram::processor {

namespace {

constexpr const char* kMigration = R"SQL(
-- One row per running instance; an instance whose row expired is gone (its leases are free).
CREATE TABLE IF NOT EXISTS processor_members (
    processor text NOT NULL,
    member uuid NOT NULL,
    host text NOT NULL,
    pid int NOT NULL,
    listen text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (processor, member)
);
-- One row per (processor, partition). owner NULL = free; epoch grows with every claim and fences
-- the previous owner; checkpoint = stream sequence at or below which every message of the
-- partition is done; position = the event position at that sequence; pending = messages of the
-- partition after the checkpoint, as last seen by the owner.
CREATE TABLE IF NOT EXISTS processor_leases (
    processor text NOT NULL,
    partition int NOT NULL,
    owner uuid,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz,
    checkpoint bigint NOT NULL DEFAULT 0,
    position bigint NOT NULL DEFAULT 0,
    pending bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (processor, partition)
);
CREATE TABLE IF NOT EXISTS processor_parked (
    processor text NOT NULL,
    event_id uuid NOT NULL,
    position bigint NOT NULL,
    aggregate_id text NOT NULL,
    type text NOT NULL,
    envelope jsonb NOT NULL,
    error text NOT NULL DEFAULT '',
    attempts int NOT NULL DEFAULT 0,
    parked_at timestamptz NOT NULL DEFAULT now(),
    retry_requested boolean NOT NULL DEFAULT false,
    PRIMARY KEY (processor, event_id)
);
CREATE INDEX IF NOT EXISTS processor_parked_retry ON processor_parked (processor) WHERE retry_requested;
)SQL";

}  // namespace

Status migrate(const std::string& database_url, int partitions) {
    if (partitions < 1 || partitions > events::kMaxPartitions)
        return Error::make("invalid_config", "ENGRAM_PARTITIONS must be between 1 and " + std::to_string(events::kMaxPartitions));
    try {
        pqxx::connection c(database_url);
        pqxx::work tx(c);
        tx.exec("SELECT pg_advisory_xact_lock(hashtext('engram.processor.migrate'))");
        tx.exec(kMigration);
        tx.commit();
        auto recorded = pg::record_setting(c, "partitions", std::to_string(partitions));
        if (recorded != std::to_string(partitions))
            return Error::make("invalid_config", "ENGRAM_PARTITIONS is " + std::to_string(partitions) +
                                                     " but this deployment's stream is partitioned " + recorded +
                                                     " ways (engram_settings): every aggregate would change partition");
        return ok();
    } catch (const std::exception& e) {
        return Error::make("database", std::string("cannot migrate the processor tables: ") + e.what());
    }
}

}  // namespace engram::processor
