#include "engram/store/schema.h"

#include <string>
#include <vector>

namespace engram::store {
namespace {

constexpr long long kMigrationLock = 0x656e6772616d01;  // "engram" + 1

const std::vector<std::string>& migrations() {
    static const std::vector<std::string> m = {
        // 1: the log. Positions are assigned by the single writer (no sequence: sequences leave
        // gaps on rollback and hand out numbers in start order, not commit order).
        R"SQL(
        CREATE TABLE events (
            position          bigint      PRIMARY KEY CHECK (position > 0),
            id                uuid        NOT NULL UNIQUE,
            type              text        NOT NULL,
            aggregate_id      text        NOT NULL,
            aggregate_version bigint      NOT NULL CHECK (aggregate_version > 0),
            ts                timestamptz NOT NULL,
            data              jsonb       NOT NULL,
            metadata          jsonb       NOT NULL,
            CONSTRAINT events_aggregate_version_key UNIQUE (aggregate_id, aggregate_version)
        );
        CREATE INDEX events_type_position ON events (type, position);
        CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'events is append-only: % refused', TG_OP;
        END $$;
        CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION events_append_only();
        )SQL",
        // 2: the outbox relay's published watermark, per stream.
        R"SQL(
        CREATE TABLE relay_state (
            stream    text   PRIMARY KEY,
            published bigint NOT NULL
        );
        )SQL",
        // 3: persisted projections (kept by the memory processor, rebuilt by the CLI, read by the
        // store): one row per instance with the position and aggregate version it reflects.
        R"SQL(
        CREATE TABLE IF NOT EXISTS projection_state (
            name       text        NOT NULL,
            id         text        NOT NULL,
            state      jsonb       NOT NULL,
            position   bigint      NOT NULL,
            version    bigint      NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, id)
        );
        ALTER TABLE projection_state ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;
        )SQL",
        // 4: which store process relays, as a replicated row (a session advisory lock vanishes in a
        // failover without telling its holder). epoch grows with every claim; with the database's
        // timeline it fences the stream (docs in relay.h).
        R"SQL(
        CREATE TABLE relay_lease (
            stream     text        PRIMARY KEY,
            owner      text        NOT NULL,
            epoch      bigint      NOT NULL,
            expires_at timestamptz NOT NULL
        );
        )SQL",
        // 5: a persisted state is a large JSON document, rewritten whole: lz4 compresses it several
        // times faster than the default pglz (a rebuild spent a third of its time writing states).
        // A server built without lz4 keeps pglz.
        R"SQL(
        DO $$ BEGIN
            ALTER TABLE projection_state ALTER COLUMN state SET COMPRESSION lz4;
        EXCEPTION WHEN feature_not_supported THEN NULL;
        END $$;
        )SQL",
        // 6: the scheduler asks for the sessions whose earliest pending reminder is due; byte order
        // (COLLATE "C") of the normalised UTC text is time order.
        R"SQL(
        CREATE INDEX IF NOT EXISTS projection_state_reminders_due
            ON projection_state (((state->>'next_due_at') COLLATE "C"))
            WHERE name = 'reminders' AND state->>'next_due_at' IS NOT NULL;
        )SQL",
    };
    return m;
}

}  // namespace

int schema_version() { return static_cast<int>(migrations().size()); }

void migrate(pqxx::connection& c) {
    pqxx::work tx(c);
    tx.exec("SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLock) + ")");
    tx.exec(
        "CREATE TABLE IF NOT EXISTS engram_schema (version int PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now())");
    auto r = tx.exec("SELECT coalesce(max(version), 0) FROM engram_schema");
    int have = r[0][0].as<int>();
    const auto& m = migrations();
    for (int v = have + 1; v <= static_cast<int>(m.size()); ++v) {
        tx.exec(m[v - 1]);
        tx.exec("INSERT INTO engram_schema(version) VALUES (" + std::to_string(v) + ")");
    }
    tx.commit();
}

}  // namespace engram::store
