#pragma once
// The event catalog: the known event types, their category and the JSON Schema of their `data`,
// embedded at build time from proto/catalog.json and proto/events/*.schema.json.
// A Catalog is immutable after construction: every const member is safe to call from any thread.
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "engram/core/result.h"
#include "engram/events/event.h"
#include "engram/events/types.h"

namespace engram::events {

struct CatalogEntry {
    std::string type;         // e.g. "MessageReceived"
    std::string category;     // "input" | "ai" | "output" | "memory"
    std::string description;  // one line
    std::string schema_file;  // relative to proto/, e.g. "events/MessageReceived.schema.json"
    nlohmann::json schema;    // the parsed schema of `data`
};

class Catalog {
public:
    // The catalog of proto/ as embedded in the binary; built once, on first use (thread-safe).
    // Throws std::runtime_error if the embedded documents are inconsistent (a build bug; tests catch it).
    static const Catalog& builtin();

    // Builds a catalog from a catalog.json document and its schemas keyed by their `schema` path.
    // Checks: `types` is an array of entries with a PascalCase `type` (no duplicates), a `category`, a
    // `description`, and a `schema` present in `schemas` that is an object schema of the supported
    // subset (check_schema). Error code "invalid_schema".
    static Result<Catalog> from_documents(const nlohmann::json& catalog,
                                          const std::map<std::string, nlohmann::json, std::less<>>& schemas);

    bool known(std::string_view type) const;
    // Unknown type: ok (the store is general-purpose). Known type: `data` against its schema;
    // Error{"schema_violation", "MessageReceived.data.text: expected string, got number"}.
    Status validate(std::string_view type, const nlohmann::json& data) const;
    Status validate(const NewEvent& e) const { return validate(e.type, e.data); }

    std::vector<std::string> types() const;                     // catalog order
    const nlohmann::json* schema(std::string_view type) const;  // nullptr when unknown
    const CatalogEntry* entry(std::string_view type) const;     // nullptr when unknown
    const std::vector<CatalogEntry>& entries() const { return entries_; }
    const nlohmann::json& document() const { return document_; }  // catalog.json as given

private:
    Catalog() = default;
    nlohmann::json document_;
    std::vector<CatalogEntry> entries_;
    std::map<std::string, std::size_t, std::less<>> index_;
};

}  // namespace engram::events
