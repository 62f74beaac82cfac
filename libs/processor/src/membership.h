#pragma once
// Membership and leases: the rows that say which instance of a processor is alive and which one
// owns each partition. Used by the coordinator thread only (one connection of its own); every
// method is one short statement (autocommit), so no coordinator transaction ever holds a lease row
// while it waits for another. Times are the database's (now()), so instances on machines whose
// clocks disagree still agree on who has expired.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engram/core/result.h"
#include "engram/pg/pg.h"

#include <pqxx/pqxx>

namespace engram::processor {

// The owner of every partition among `members`: rendezvous (highest-random-weight) hashing with
// bounded loads. Each partition goes to the member with the highest hash(member, partition) among
// those below ceil(P/N) partitions, so shares differ by at most one, and a join or a leave moves
// about P/N partitions (a few more where a capped member's choice cascades), never all.
std::vector<std::string> assign(const std::vector<std::string>& members, int partitions);

struct LeaseRow {
    int partition = 0;
    std::string owner;  // "" = free
    std::int64_t epoch = 0;
    bool live = false;  // owner set and expires_at > now()
    std::uint64_t checkpoint = 0;
};

struct Claimed {
    std::int64_t epoch = 0;
    std::uint64_t checkpoint = 0;
};

class Membership {
public:
    Membership(std::string database_url, std::string processor, std::string member, std::chrono::milliseconds ttl);
    ~Membership();

    // Upserts this member's row (expires in ttl) and returns the live members, sorted.
    Result<std::vector<std::string>> heartbeat(const std::string& host, int pid, const std::string& listen);
    Result<std::vector<LeaseRow>> leases();
    // Takes the partition if it is free or its lease expired: epoch + 1. nullopt = someone holds it.
    Result<std::optional<Claimed>> claim(int partition);
    // Renews the lease and moves the checkpoint (never backwards). false = the lease is not ours
    // any more (taken over after it expired): the claim is lost.
    Result<bool> renew(int partition, std::int64_t epoch, std::uint64_t checkpoint, std::int64_t position, std::uint64_t pending);
    // Hands the partition over: checkpoint, owner NULL. false = it was not ours any more.
    Result<bool> release(int partition, std::int64_t epoch, std::uint64_t checkpoint, std::int64_t position);
    Status leave();  // deletes the member row

private:
    Result<pqxx::connection*> conn();
    std::string url_, processor_, member_;
    std::chrono::milliseconds ttl_;
    std::unique_ptr<pg::Watchdog> watchdog_;  // before c_: a guard never outlives the connection
    std::unique_ptr<pqxx::connection> c_;
};

}  // namespace engram::processor
