#include "engram/events/catalog.h"

#include <stdexcept>

#include "embedded_proto.h"
#include "engram/events/codes.h"
#include "engram/events/schema.h"

namespace engram::events {

using nlohmann::json;

namespace {

Error bad(std::string detail) { return Error::make(std::string(codes::invalid_schema), std::move(detail)); }

const std::string* string_field(const json& j, const char* key) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) return nullptr;
    return &it->get_ref<const std::string&>();
}

Catalog load_builtin() {
    json catalog;
    std::map<std::string, json, std::less<>> schemas;
    bool have_catalog = false;
    for (std::size_t i = 0; i < detail::kEmbeddedProtoCount; ++i) {
        const auto& f = detail::kEmbeddedProto[i];
        json doc = json::parse(f.content, nullptr, /*allow_exceptions=*/false);
        if (doc.is_discarded()) throw std::runtime_error("embedded proto/" + std::string(f.path) + " is not valid JSON");
        if (f.path == "catalog.json") {
            catalog = std::move(doc);
            have_catalog = true;
        } else {
            schemas.emplace(std::string(f.path), std::move(doc));
        }
    }
    if (!have_catalog) throw std::runtime_error("proto/catalog.json is not embedded");
    auto c = Catalog::from_documents(catalog, schemas);
    if (!c) throw std::runtime_error("embedded proto/ catalog is invalid: " + c.error().detail);
    return std::move(c.value());
}

}  // namespace

const Catalog& Catalog::builtin() {
    static const Catalog instance = load_builtin();
    return instance;
}

Result<Catalog> Catalog::from_documents(const json& catalog, const std::map<std::string, json, std::less<>>& schemas) {
    if (!catalog.is_object()) return bad("the catalog must be a JSON object");
    auto types = catalog.find("types");
    if (types == catalog.end() || !types->is_array()) return bad("the catalog's 'types' must be an array");
    const json* categories = nullptr;
    if (auto c = catalog.find("categories"); c != catalog.end()) {
        if (!c->is_object()) return bad("the catalog's 'categories' must be an object");
        categories = &*c;
    }

    Catalog out;
    out.document_ = catalog;
    for (std::size_t i = 0; i < types->size(); ++i) {
        const json& t = (*types)[i];
        std::string where = "types[" + std::to_string(i) + "]";
        if (!t.is_object()) return bad(where + ": must be an object");
        const std::string* name = string_field(t, "type");
        const std::string* category = string_field(t, "category");
        const std::string* description = string_field(t, "description");
        const std::string* file = string_field(t, "schema");
        if (!name || !valid_type_name(*name)) return bad(where + ": 'type' must be a PascalCase name");
        where += " (" + *name + ")";
        if (!category) return bad(where + ": 'category' is required");
        if (categories && !categories->contains(*category))
            return bad(where + ": category '" + *category + "' is not listed in 'categories'");
        if (!description) return bad(where + ": 'description' is required");
        if (!file) return bad(where + ": 'schema' is required");
        if (out.index_.count(*name)) return bad(where + ": duplicate type");
        auto s = schemas.find(*file);
        if (s == schemas.end()) return bad(where + ": schema file '" + *file + "' is missing");
        const json& schema = s->second;
        if (!schema.is_object() || schema.value("type", json()) != "object")
            return bad(where + ": schema '" + *file + "' must have \"type\": \"object\"");
        if (auto st = check_schema(schema); !st) return bad(where + ": schema '" + *file + "': " + st.error().detail);

        out.index_.emplace(*name, out.entries_.size());
        out.entries_.push_back(CatalogEntry{*name, *category, *description, *file, schema});
    }
    return out;
}

bool Catalog::known(std::string_view type) const { return index_.find(type) != index_.end(); }

const CatalogEntry* Catalog::entry(std::string_view type) const {
    auto it = index_.find(type);
    return it == index_.end() ? nullptr : &entries_[it->second];
}

const json* Catalog::schema(std::string_view type) const {
    const CatalogEntry* e = entry(type);
    return e ? &e->schema : nullptr;
}

Status Catalog::validate(std::string_view type, const json& data) const {
    const json* s = schema(type);
    if (!s) return ok();
    return validate_schema(*s, data, std::string(type) + ".data");
}

std::vector<std::string> Catalog::types() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_) out.push_back(e.type);
    return out;
}

}  // namespace engram::events
