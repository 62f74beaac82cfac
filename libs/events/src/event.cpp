#include "engram/events/event.h"

#include <cstdint>
#include <map>
#include <type_traits>

#include "engram/events/codes.h"

namespace engram::events {

using nlohmann::json;

namespace {

Error invalid(std::string detail) { return Error::make(std::string(codes::invalid_event), std::move(detail)); }

std::string field_msg(std::string_view field, std::string_view what) {
    return "field '" + std::string(field) + "' " + std::string(what);
}

// PostgreSQL's jsonb refuses U+0000 in a string or key; checked here so the answer is a 400 that
// names the field instead of a refused insert.
std::optional<Error> nul_problem(std::string_view field, const json& v) {
    auto at = find_nul(v);
    if (!at) return std::nullopt;
    return invalid(
        field_msg(field, "holds U+0000 at " + (at->empty() ? std::string("its top") : *at) + " (PostgreSQL cannot store it)"));
}

// Decodes one UTF-8 sequence at s[i]; returns the code point and advances i. Invalid bytes decode as
// U+FFFD (nlohmann's parser already refuses invalid UTF-8 in request bodies).
char32_t next_code_point(std::string_view s, std::size_t& i) {
    unsigned char c = static_cast<unsigned char>(s[i++]);
    if (c < 0x80) return c;
    int extra = (c >= 0xF0) ? 3 : (c >= 0xE0) ? 2 : (c >= 0xC0) ? 1 : -1;
    if (extra < 0) return 0xFFFD;
    char32_t cp = c & (0x3F >> extra);
    for (int k = 0; k < extra; ++k) {
        if (i >= s.size() || (static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) return 0xFFFD;
        cp = (cp << 6) | (static_cast<unsigned char>(s[i++]) & 0x3F);
    }
    return cp;
}

bool is_control(char32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F); }

// Empty optional when valid, else the detail.
std::optional<std::string> aggregate_id_problem(std::string_view a) {
    if (a.empty()) return field_msg("aggregate_id", "must not be empty");
    std::size_t n = 0;
    for (std::size_t i = 0; i < a.size();) {
        if (is_control(next_code_point(a, i))) return field_msg("aggregate_id", "must not contain control characters");
        ++n;
    }
    if (n > kMaxAggregateIdLength)
        return field_msg("aggregate_id", "must be at most " + std::to_string(kMaxAggregateIdLength) + " characters long");
    return std::nullopt;
}

Result<std::string> get_aggregate_id(const json& j) {
    auto it = j.find("aggregate_id");
    if (it == j.end()) return invalid(field_msg("aggregate_id", "is required"));
    if (!it->is_string()) return invalid(field_msg("aggregate_id", "must be a string"));
    const auto& a = it->get_ref<const std::string&>();
    if (auto p = aggregate_id_problem(a)) return invalid(*p);
    return a;
}

Result<std::optional<AggregateVersion>> get_expected_version(const json& j) {
    auto it = j.find("expected_version");
    if (it == j.end()) return std::optional<AggregateVersion>{};
    if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<std::int64_t>() < 0) ||
        (it->is_number_unsigned() && it->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)))
        return invalid(field_msg("expected_version", "must be a non-negative integer"));
    return std::optional<AggregateVersion>(AggregateVersion(it->get<std::int64_t>()));
}

// Moves `data` and `metadata` out of `j` when it is not const (the body's DOM is thrown away after
// parsing: a deep copy of each event's data was a tenth of a batch append's CPU).
template <class J>
void take_into(json& into, J& from) {
    if constexpr (std::is_const_v<J>)
        into = from;
    else
        into = std::move(from);
}

template <class J>
Result<NewEvent> parse_event(J& owner, const std::string* inherited_aggregate) {
    const json& j = owner;  // read through this; `owner` only gives its data and metadata away
    if (!j.is_object()) return invalid("an event must be a JSON object");
    NewEvent e;

    auto t = j.find("type");
    if (t == j.end()) return invalid(field_msg("type", "is required"));
    if (!t->is_string()) return invalid(field_msg("type", "must be a string"));
    e.type = t->get<std::string>();
    if (!valid_type_name(e.type))
        return invalid(field_msg(
            "type", "must be PascalCase ([A-Z][A-Za-z0-9]*, at most " + std::to_string(kMaxTypeLength) + " characters)"));

    if (inherited_aggregate && !j.contains("aggregate_id")) {
        e.aggregate_id = *inherited_aggregate;
    } else {
        auto a = get_aggregate_id(j);
        if (!a) return std::move(a).error();
        e.aggregate_id = std::move(a.value());
        if (inherited_aggregate && e.aggregate_id != *inherited_aggregate)
            return invalid(field_msg("aggregate_id", "must equal the batch's aggregate_id"));
    }

    if (auto it = j.find("id"); it != j.end()) {
        if (!it->is_string()) return invalid(field_msg("id", "must be a UUID string"));
        auto u = Uuid::parse(it->get_ref<const std::string&>());
        if (!u) return invalid(field_msg("id", "must be a UUID string"));
        if (u->is_nil()) return invalid(field_msg("id", "must not be the nil UUID"));
        e.id = *u;
    }

    if (auto it = j.find("data"); it != j.end()) {
        if (!it->is_object()) return invalid(field_msg("data", "must be a JSON object"));
        if (auto p = nul_problem("data", *it)) return *p;
        take_into(e.data, owner.at("data"));
    }

    if (auto it = j.find("metadata"); it != j.end()) {
        if (!it->is_object()) return invalid(field_msg("metadata", "must be a JSON object"));
        for (auto key : {meta::source, meta::correlation_id, meta::causation_id, meta::user_id, meta::session_id}) {
            auto m = it->find(std::string(key));
            if (m != it->end() && !m->is_string()) return invalid(field_msg("metadata." + std::string(key), "must be a string"));
        }
        if (auto p = nul_problem("metadata", *it)) return *p;
        take_into(e.metadata, owner.at("metadata"));
    }
    return e;
}

Error prefixed(std::size_t i, Error e) {
    e.detail = "events[" + std::to_string(i) + "]: " + e.detail;
    return e;
}

}  // namespace

bool valid_type_name(std::string_view t) {
    if (t.empty() || t.size() > kMaxTypeLength) return false;
    if (t[0] < 'A' || t[0] > 'Z') return false;
    for (char c : t)
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
    return true;
}

bool valid_aggregate_id(std::string_view a) { return !aggregate_id_problem(a); }

json NewEvent::to_json() const {
    json j = {{"type", type}, {"aggregate_id", aggregate_id}, {"data", data}, {"metadata", metadata}};
    if (id) j["id"] = id->str();
    return j;
}

Result<NewEvent> parse_new_event(const json& j) { return parse_event(j, nullptr); }

namespace {

template <class J>
Result<AppendRequest> parse_request(J& body) {
    if (!body.is_object()) return invalid("the body must be a JSON object (one event, or a batch with 'events')");
    AppendRequest req;
    auto ev = get_expected_version(body);
    if (!ev) return std::move(ev).error();
    req.expected_version = ev.value();

    auto events = body.find("events");
    if (events == body.end()) {
        auto e = parse_event(body, nullptr);
        if (!e) return std::move(e).error();
        req.aggregate_id = e->aggregate_id;
        req.events.push_back(std::move(e.value()));
        return req;
    }

    req.batch = true;
    auto a = get_aggregate_id(body);
    if (!a) return std::move(a).error();
    req.aggregate_id = std::move(a.value());
    if (!events->is_array()) return invalid(field_msg("events", "must be an array"));
    if (events->empty()) return invalid(field_msg("events", "must not be empty"));
    if (events->size() > kMaxBatchEvents)
        return invalid(field_msg("events", "must hold at most " + std::to_string(kMaxBatchEvents) + " events"));
    req.events.reserve(events->size());
    std::map<Uuid, std::size_t> seen;
    for (std::size_t i = 0; i < events->size(); ++i) {
        auto e = parse_event((*events)[i], &req.aggregate_id);
        if (!e) return prefixed(i, std::move(e).error());
        if (e->id) {
            auto [it, inserted] = seen.emplace(*e->id, i);
            if (!inserted)
                return prefixed(i, invalid(field_msg("id", "duplicates the id of events[" + std::to_string(it->second) + "]")));
        }
        req.events.push_back(std::move(e.value()));
    }
    return req;
}

}  // namespace

Result<AppendRequest> parse_append_request(const json& body) { return parse_request(body); }

Result<AppendRequest> parse_append_request(json&& body) { return parse_request(body); }

Result<AppendRequest> parse_append_body(std::string_view body) {
    auto j = parse_json(body, "the body");
    if (!j) return std::move(j).error();
    return parse_append_request(std::move(*j));
}

bool same_content(const NewEvent& n, const Event& s) {
    return n.type == s.type && n.aggregate_id == s.aggregate_id && n.data == s.data && n.metadata == s.metadata;
}

Event Event::text_copy() const {
    if (!text) return *this;
    Event e;
    e.id = id;
    e.type = type;
    e.aggregate_id = aggregate_id;
    e.version = version;
    e.position = position;
    e.timestamp = timestamp;
    e.text = text;
    return e;
}

json Event::to_json() const {
    return json{{"id", id.str()},
                {"type", type},
                {"aggregate_id", aggregate_id},
                {"aggregate_version", version.value()},
                {"position", position.value()},
                {"timestamp", format_rfc3339(timestamp)},
                {"data", data},
                {"metadata", metadata}};
}

std::string Event::to_json_text(std::string_view data_text, std::string_view metadata_text,
                                std::string_view timestamp_text) const {
    // The keys in nlohmann's order (std::map: sorted), so the bytes equal to_json().dump().
    std::string out;
    out.reserve(160 + type.size() + aggregate_id.size() + data_text.size() + metadata_text.size());
    out += "{\"aggregate_id\":";
    out += json(aggregate_id).dump();
    out += ",\"aggregate_version\":";
    out += std::to_string(version.value());
    out += ",\"data\":";
    out += data_text;
    out += ",\"id\":\"";
    out += id.str();
    out += "\",\"metadata\":";
    out += metadata_text;
    out += ",\"position\":";
    out += std::to_string(position.value());
    out += ",\"timestamp\":\"";
    if (timestamp_text.empty())
        out += format_rfc3339(timestamp);
    else
        out += timestamp_text;
    out += "\",\"type\":";
    out += json(type).dump();
    out += '}';
    return out;
}

std::string Event::json_text() const { return text ? *text : to_json().dump(); }

Result<Event> Event::from_json(const json& j) {
    if (!j.is_object()) return invalid("an event must be a JSON object");
    Event e;
    auto id = j.find("id");
    if (id == j.end() || !id->is_string()) return invalid(field_msg("id", "must be a UUID string"));
    auto u = Uuid::parse(id->get_ref<const std::string&>());
    if (!u) return invalid(field_msg("id", "must be a UUID string"));
    e.id = *u;

    auto t = j.find("type");
    if (t == j.end() || !t->is_string()) return invalid(field_msg("type", "must be a string"));
    e.type = t->get<std::string>();
    if (!valid_type_name(e.type)) return invalid(field_msg("type", "must be PascalCase"));

    auto a = get_aggregate_id(j);
    if (!a) return std::move(a).error();
    e.aggregate_id = std::move(a.value());

    auto positive = [&](const char* name, std::int64_t& out) -> std::optional<Error> {
        auto it = j.find(name);
        if (it == j.end() || !it->is_number_integer() || (!it->is_number_unsigned() && it->get<std::int64_t>() < 1) ||
            (it->is_number_unsigned() &&
             (it->get<std::uint64_t>() < 1 || it->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))))
            return invalid(field_msg(name, "must be a positive integer"));
        out = it->get<std::int64_t>();
        return std::nullopt;
    };
    std::int64_t v = 0, p = 0;
    if (auto err = positive("aggregate_version", v)) return *err;
    if (auto err = positive("position", p)) return *err;
    e.version = AggregateVersion(v);
    e.position = GlobalPosition(p);

    auto ts = j.find("timestamp");
    if (ts == j.end() || !ts->is_string()) return invalid(field_msg("timestamp", "must be an RFC 3339 string"));
    auto parsed = parse_rfc3339(ts->get_ref<const std::string&>());
    if (!parsed) return invalid(field_msg("timestamp", "must be an RFC 3339 string"));
    e.timestamp = *parsed;

    auto d = j.find("data");
    if (d == j.end() || !d->is_object()) return invalid(field_msg("data", "must be a JSON object"));
    e.data = *d;
    auto m = j.find("metadata");
    if (m == j.end() || !m->is_object()) return invalid(field_msg("metadata", "must be a JSON object"));
    e.metadata = *m;
    return e;
}

std::uint32_t fnv1a32(std::string_view s) {
    std::uint32_t h = 2166136261u;
    for (unsigned char c : s) {
        h ^= c;
        h *= 16777619u;
    }
    return h;
}

int partition_of(std::string_view aggregate_id, int partitions) {
    if (partitions <= 1) return 0;
    return static_cast<int>(fnv1a32(aggregate_id) % static_cast<std::uint32_t>(partitions));
}

}  // namespace engram::events
