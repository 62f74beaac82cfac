#pragma once
#include <pqxx/pqxx>

namespace engram::store {

// Creates or upgrades the store's tables. Safe to run from several processes at once (an advisory
// lock serialises them) and on every start (applied migrations are recorded in engram_schema).
void migrate(pqxx::connection& c);
int schema_version();

}  // namespace engram::store
