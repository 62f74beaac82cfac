#include "engram/events/schema.h"

#include "engram/core/text.h"

#include <algorithm>
#include <charconv>
#include <cctype>
#include <cmath>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "engram/core/time.h"
#include "engram/core/uuid.h"
#include "engram/events/codes.h"

namespace engram::events {

using nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------------
// Helpers

const char* kind_of(const json& v) {
    switch (v.type()) {
        case json::value_t::null:
            return "null";
        case json::value_t::boolean:
            return "boolean";
        case json::value_t::number_integer:
        case json::value_t::number_unsigned:
        case json::value_t::number_float:
            return "number";
        case json::value_t::string:
            return "string";
        case json::value_t::array:
            return "array";
        case json::value_t::object:
            return "object";
        default:
            return "value";
    }
}

bool is_integral(const json& v) {
    if (v.is_number_integer()) return true;  // includes unsigned
    if (!v.is_number_float()) return false;
    double d = v.get<double>();
    return std::isfinite(d) && std::trunc(d) == d;
}

bool type_matches(std::string_view t, const json& v) {
    if (t == "string") return v.is_string();
    if (t == "object") return v.is_object();
    if (t == "array") return v.is_array();
    if (t == "boolean") return v.is_boolean();
    if (t == "null") return v.is_null();
    if (t == "number") return v.is_number();
    if (t == "integer") return is_integral(v);
    return false;
}

std::string dump(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

// A value shown in a message, cut at ~64 bytes on a UTF-8 boundary.
std::string show(const json& v) {
    std::string s = dump(v);
    constexpr std::size_t kMax = 64;
    if (s.size() <= kMax) return s;
    std::size_t cut = kMax;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    return s.substr(0, cut) + "...";
}

// A non-negative integer argument (minLength, maxItems...), whether stored signed or unsigned.
std::optional<std::uint64_t> count_arg(const json& schema, const char* key) {
    auto it = schema.find(key);
    if (it == schema.end() || !it->is_number_integer()) return std::nullopt;
    if (it->is_number_unsigned()) return it->get<std::uint64_t>();
    auto n = it->get<std::int64_t>();
    if (n < 0) return std::nullopt;
    return static_cast<std::uint64_t>(n);
}

std::string plural(std::uint64_t n, std::string_view word) {
    return std::to_string(n) + " " + std::string(word) + (n == 1 ? "" : "s");
}

bool is_ctl_or_space(unsigned char c) { return c <= 0x20 || c == 0x7F; }

bool valid_email(std::string_view s) {
    if (s.size() > 254) return false;
    auto at = s.rfind('@');
    if (at == std::string_view::npos || at == 0 || at + 1 >= s.size() || at > 64) return false;
    std::string_view local = s.substr(0, at), domain = s.substr(at + 1);
    for (unsigned char c : local)
        if (is_ctl_or_space(c) || c == '@' || c == '<' || c == '>' || c == '(' || c == ')' || c == ',' || c == ';' || c == ':' ||
            c == '\\' || c == '"' || c == '[' || c == ']')
            return false;
    if (local.front() == '.' || local.back() == '.') return false;
    if (domain.front() == '.' || domain.back() == '.' || domain.front() == '-') return false;
    if (domain.find("..") != std::string_view::npos) return false;
    for (unsigned char c : domain)
        if (!(std::isalnum(c) || c == '-' || c == '.' || c >= 0x80)) return false;
    return true;
}

bool valid_uri(std::string_view s) {
    // scheme ":" rest, with no whitespace, control or "unwise" characters (RFC 3986 absolute URI).
    auto colon = s.find(':');
    if (colon == std::string_view::npos || colon == 0 || colon + 1 >= s.size()) return false;
    if (!std::isalpha(static_cast<unsigned char>(s[0]))) return false;
    for (std::size_t i = 1; i < colon; ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (!(std::isalnum(c) || c == '+' || c == '-' || c == '.')) return false;
    }
    for (unsigned char c : s.substr(colon + 1))
        if (is_ctl_or_space(c) || c == '<' || c == '>' || c == '"' || c == '{' || c == '}' || c == '|' || c == '\\' || c == '^' ||
            c == '`')
            return false;
    return true;
}

// nullopt when the format is satisfied (or unknown), else the message.
std::optional<std::string> check_format(std::string_view format, const std::string& s) {
    if (format == "uuid") {
        if (!Uuid::parse(s)) return "expected a UUID, got " + show(json(s));
    } else if (format == "date-time") {
        if (!parse_rfc3339(s)) return "expected an RFC 3339 date-time, got " + show(json(s));
    } else if (format == "email") {
        if (!valid_email(s)) return "expected an email address, got " + show(json(s));
    } else if (format == "uri") {
        if (!valid_uri(s)) return "expected a URI, got " + show(json(s));
    }
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------------------
// Validation

class Validator {
public:
    explicit Validator(std::string_view root) : path_(root) {}

    // Returns the first violation ("<path>: <message>"), or nullopt.
    std::optional<std::string> run(const json& schema, const json& v) { return check(schema, v); }

private:
    std::string path_;

    std::optional<std::string> fail(std::string_view msg) const { return path_ + ": " + std::string(msg); }

    // Appended in place and cut back after: no temporary string per field visited.
    struct PathGuard {
        std::string& p;
        std::size_t n;
        PathGuard(std::string& path, char open, std::string_view add, std::string_view close) : p(path), n(path.size()) {
            p += open;
            p += add;
            p += close;
        }
        ~PathGuard() { p.resize(n); }
    };
    PathGuard field(std::string_view key) { return PathGuard(path_, '.', key, {}); }
    PathGuard index(std::size_t i) {
        char buf[24];
        auto r = std::to_chars(buf, buf + sizeof buf, i);
        return PathGuard(path_, '[', std::string_view(buf, static_cast<std::size_t>(r.ptr - buf)), "]");
    }

    std::optional<std::string> check(const json& schema, const json& v) {
        if (schema.is_boolean()) {
            if (schema.get<bool>()) return std::nullopt;
            return fail("not allowed");
        }
        if (!schema.is_object()) return std::nullopt;  // malformed schemas are check_schema()'s business

        if (auto it = schema.find("type"); it != schema.end()) {
            if (auto e = check_type(*it, v)) return e;
        }
        if (auto it = schema.find("enum"); it != schema.end() && it->is_array()) {
            if (std::find(it->begin(), it->end(), v) == it->end()) {
                std::string list;
                for (const auto& option : *it) list += (list.empty() ? "" : ", ") + show(option);
                return fail("must be one of " + list + "; got " + show(v));
            }
        }
        if (auto it = schema.find("const"); it != schema.end()) {
            if (*it != v) return fail("must be " + show(*it) + ", got " + show(v));
        }
        if (v.is_string()) {
            if (auto e = check_string(schema, v.get_ref<const std::string&>())) return e;
        } else if (v.is_number()) {
            if (auto e = check_number(schema, v)) return e;
        } else if (v.is_array()) {
            if (auto e = check_array(schema, v)) return e;
        } else if (v.is_object()) {
            if (auto e = check_object(schema, v)) return e;
        }
        return check_combinators(schema, v);
    }

    std::optional<std::string> check_type(const json& t, const json& v) {
        if (t.is_string()) {
            if (type_matches(t.get_ref<const std::string&>(), v)) return std::nullopt;
            return fail("expected " + t.get<std::string>() + ", got " + kind_of(v));
        }
        if (t.is_array()) {
            std::string names;
            for (std::size_t i = 0; i < t.size(); ++i) {
                if (!t[i].is_string()) continue;
                if (type_matches(t[i].get_ref<const std::string&>(), v)) return std::nullopt;
                names += (i == 0 ? "" : (i + 1 == t.size() ? " or " : ", ")) + t[i].get<std::string>();
            }
            return fail("expected " + names + ", got " + kind_of(v));
        }
        return std::nullopt;
    }

    std::optional<std::string> check_string(const json& schema, const std::string& s) {
        auto min = count_arg(schema, "minLength"), max = count_arg(schema, "maxLength");
        if (min || max) {
            std::size_t len = utf8_length(s);
            if (min && len < *min) return fail("must be at least " + plural(*min, "character") + " long");
            if (max && len > *max)
                return fail("must be at most " + plural(*max, "character") + " long, got " + std::to_string(len));
        }
        if (auto f = schema.find("format"); f != schema.end() && f->is_string()) {
            if (auto e = check_format(f->get_ref<const std::string&>(), s)) return fail(*e);
        }
        return std::nullopt;
    }

    std::optional<std::string> check_number(const json& schema, const json& v) {
        // json's comparison operators compare integer, unsigned and float values numerically.
        if (auto it = schema.find("minimum"); it != schema.end() && it->is_number() && v < *it)
            return fail("must be >= " + dump(*it) + ", got " + dump(v));
        if (auto it = schema.find("maximum"); it != schema.end() && it->is_number() && v > *it)
            return fail("must be <= " + dump(*it) + ", got " + dump(v));
        if (auto it = schema.find("exclusiveMinimum"); it != schema.end() && it->is_number() && !(v > *it))
            return fail("must be > " + dump(*it) + ", got " + dump(v));
        if (auto it = schema.find("exclusiveMaximum"); it != schema.end() && it->is_number() && !(v < *it))
            return fail("must be < " + dump(*it) + ", got " + dump(v));
        return std::nullopt;
    }

    std::optional<std::string> check_array(const json& schema, const json& v) {
        if (auto n = count_arg(schema, "minItems"); n && v.size() < *n) return fail("must have at least " + plural(*n, "item"));
        if (auto n = count_arg(schema, "maxItems"); n && v.size() > *n)
            return fail("must have at most " + plural(*n, "item") + ", got " + std::to_string(v.size()));
        if (auto it = schema.find("uniqueItems"); it != schema.end() && it->is_boolean() && it->get<bool>() && v.size() > 1) {
            // Sort indices by value (O(n log n)), then report the first pair of equal neighbours.
            std::vector<std::size_t> idx(v.size());
            std::iota(idx.begin(), idx.end(), 0);
            std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
            std::optional<std::pair<std::size_t, std::size_t>> dup;
            for (std::size_t k = 1; k < idx.size(); ++k) {
                if (v[idx[k - 1]] == v[idx[k]]) {
                    std::pair<std::size_t, std::size_t> p{std::min(idx[k - 1], idx[k]), std::max(idx[k - 1], idx[k])};
                    if (!dup || p < *dup) dup = p;
                }
            }
            if (dup)
                return fail("items must be unique ([" + std::to_string(dup->first) + "] and [" + std::to_string(dup->second) +
                            "] are equal)");
        }
        if (auto it = schema.find("items"); it != schema.end()) {
            for (std::size_t i = 0; i < v.size(); ++i) {
                auto g = index(i);
                if (auto e = check(*it, v[i])) return e;
            }
        }
        return std::nullopt;
    }

    std::optional<std::string> check_object(const json& schema, const json& v) {
        if (auto it = schema.find("required"); it != schema.end() && it->is_array()) {
            for (const auto& name : *it) {
                if (!name.is_string() || v.contains(name.get_ref<const std::string&>())) continue;
                auto g = field(name.get_ref<const std::string&>());
                return fail("required field is missing");
            }
        }
        if (auto n = count_arg(schema, "minProperties"); n && v.size() < *n)
            return fail("must have at least " + plural(*n, "field"));
        if (auto n = count_arg(schema, "maxProperties"); n && v.size() > *n)
            return fail("must have at most " + plural(*n, "field") + ", got " + std::to_string(v.size()));

        const json* props = nullptr;
        if (auto it = schema.find("properties"); it != schema.end() && it->is_object()) {
            props = &*it;
            for (auto p = props->begin(); p != props->end(); ++p) {
                auto vi = v.find(p.key());
                if (vi == v.end()) continue;
                auto g = field(p.key());
                if (auto e = check(p.value(), *vi)) return e;
            }
        }
        if (auto it = schema.find("additionalProperties"); it != schema.end()) {
            for (auto vi = v.begin(); vi != v.end(); ++vi) {
                if (props && props->contains(vi.key())) continue;
                auto g = field(vi.key());
                if (it->is_boolean() && !it->get<bool>()) return fail("unexpected field");
                if (auto e = check(*it, vi.value())) return e;
            }
        }
        return std::nullopt;
    }

    std::optional<std::string> check_combinators(const json& schema, const json& v) {
        if (auto it = schema.find("allOf"); it != schema.end() && it->is_array()) {
            for (const auto& sub : *it)
                if (auto e = check(sub, v)) return e;
        }
        if (auto it = schema.find("anyOf"); it != schema.end() && it->is_array() && !it->empty()) {
            std::vector<std::string> errors;
            for (const auto& sub : *it) {
                auto e = check(sub, v);
                if (!e) {
                    errors.clear();
                    break;
                }
                errors.push_back(std::move(*e));
            }
            if (!errors.empty()) return fail("matches none of the anyOf alternatives (" + join(errors) + ")");
        }
        if (auto it = schema.find("oneOf"); it != schema.end() && it->is_array() && !it->empty()) {
            std::vector<std::string> errors;
            std::size_t matched = 0;
            for (const auto& sub : *it) {
                if (auto e = check(sub, v))
                    errors.push_back(std::move(*e));
                else
                    ++matched;
            }
            if (matched == 0) return fail("matches none of the oneOf alternatives (" + join(errors) + ")");
            if (matched > 1)
                return fail("matches " + std::to_string(matched) + " of the oneOf alternatives, expected exactly one");
        }
        if (auto it = schema.find("not"); it != schema.end()) {
            if (!check(*it, v)) return fail("must not match the schema of `not`");
        }
        return std::nullopt;
    }

    static std::string join(const std::vector<std::string>& errors) {
        constexpr std::size_t kShown = 4;
        std::string out;
        for (std::size_t i = 0; i < errors.size() && i < kShown; ++i) out += (i ? "; " : "") + errors[i];
        if (errors.size() > kShown) out += "; ...";
        return out;
    }
};

// ---------------------------------------------------------------------------------------------------
// Schema checking

const std::vector<std::string_view>& annotation_keywords() {
    static const std::vector<std::string_view> k = {"$schema", "$id",      "$comment",   "title",    "description",
                                                    "default", "examples", "deprecated", "readOnly", "writeOnly"};
    return k;
}

bool one_of(std::string_view s, std::initializer_list<std::string_view> options) {
    return std::find(options.begin(), options.end(), s) != options.end();
}

std::string escape_pointer(std::string_view key) {
    std::string out;
    for (char c : key) {
        if (c == '~')
            out += "~0";
        else if (c == '/')
            out += "~1";
        else
            out += c;
    }
    return out;
}

class SchemaChecker {
public:
    std::optional<std::string> check(const json& s, const std::string& ptr) {
        if (s.is_boolean()) return std::nullopt;
        if (!s.is_object()) return at(ptr, "a schema must be an object or a boolean");
        for (auto it = s.begin(); it != s.end(); ++it) {
            const std::string& k = it.key();
            const json& a = it.value();
            std::string here = ptr + "/" + escape_pointer(k);
            auto& ann = annotation_keywords();
            if (std::find(ann.begin(), ann.end(), k) != ann.end()) continue;
            if (k == "type") {
                if (auto e = check_type(a, here)) return e;
            } else if (k == "enum") {
                if (!a.is_array() || a.empty()) return at(here, "must be a non-empty array");
            } else if (k == "const") {
                // any value
            } else if (k == "required") {
                if (!a.is_array()) return at(here, "must be an array of strings");
                for (const auto& r : a)
                    if (!r.is_string()) return at(here, "must be an array of strings");
            } else if (k == "properties") {
                if (!a.is_object()) return at(here, "must be an object of schemas");
                for (auto p = a.begin(); p != a.end(); ++p)
                    if (auto e = check(p.value(), here + "/" + escape_pointer(p.key()))) return e;
            } else if (k == "additionalProperties" || k == "items" || k == "not") {
                if (auto e = check(a, here)) return e;
            } else if (k == "allOf" || k == "anyOf" || k == "oneOf") {
                if (!a.is_array() || a.empty()) return at(here, "must be a non-empty array of schemas");
                for (std::size_t i = 0; i < a.size(); ++i)
                    if (auto e = check(a[i], here + "/" + std::to_string(i))) return e;
            } else if (one_of(k, {"minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"})) {
                if (!a.is_number_integer() || (!a.is_number_unsigned() && a.get<std::int64_t>() < 0))
                    return at(here, "must be a non-negative integer");
            } else if (one_of(k, {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})) {
                if (!a.is_number()) return at(here, "must be a number");
            } else if (k == "uniqueItems") {
                if (!a.is_boolean()) return at(here, "must be a boolean");
            } else if (k == "format") {
                if (!a.is_string() || !one_of(a.get_ref<const std::string&>(), {"uuid", "date-time", "email", "uri"}))
                    return at(here, "unsupported format (supported: uuid, date-time, email, uri)");
            } else {
                return at(here, "unsupported keyword '" + k + "'");
            }
        }
        return std::nullopt;
    }

private:
    static std::optional<std::string> at(const std::string& ptr, const std::string& msg) {
        return (ptr.empty() ? std::string("#") : "#" + ptr) + ": " + msg;
    }
    static bool known_type(const json& t) {
        return t.is_string() &&
               one_of(t.get_ref<const std::string&>(), {"string", "object", "array", "boolean", "null", "number", "integer"});
    }
    std::optional<std::string> check_type(const json& a, const std::string& here) {
        if (a.is_string()) {
            if (!known_type(a)) return at(here, "unknown type " + show(a));
            return std::nullopt;
        }
        if (!a.is_array() || a.empty()) return at(here, "must be a type name or a non-empty array of them");
        for (const auto& t : a)
            if (!known_type(t)) return at(here, "unknown type " + show(t));
        return std::nullopt;
    }
};

}  // namespace

Status validate_schema(const json& schema, const json& value, std::string_view root_name) {
    Validator v(root_name);
    if (auto e = v.run(schema, value)) return Error::make(std::string(codes::schema_violation), std::move(*e));
    return ok();
}

Status check_schema(const json& schema) {
    SchemaChecker c;
    if (auto e = c.check(schema, "")) return Error::make(std::string(codes::invalid_schema), std::move(*e));
    return ok();
}

}  // namespace engram::events
