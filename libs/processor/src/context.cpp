// Context: what a handler may do, each effect checked against the partition's lease.
#include "context_impl.h"

#include "engram/http/client.h"

#include <pqxx/pqxx>

namespace engram::processor {

using json = nlohmann::json;

namespace {

Error fenced_error(int partition, const std::string& why) {
    return Error::make("fenced", "partition " + std::to_string(partition) + ": " + why + "; the new owner handles this event");
}

}  // namespace

Status Context::Impl::fence(pqxx::transaction_base& tx) const {
    if (!claim || claim->lost.load()) {
        if (fenced) fenced->inc();
        return fenced_error(claim ? claim->partition : -1, "this instance no longer holds the lease");
    }
    // FOR SHARE: a takeover (an UPDATE of the row) waits until this transaction ends, and every
    // transaction after it sees the new owner and epoch.
    auto r = tx.exec_params(
        "SELECT 1 FROM processor_leases WHERE processor = $1 AND partition = $2 AND owner = $3::uuid AND epoch = $4 "
        "AND expires_at > now() FOR SHARE",
        *processor, claim->partition, *member, claim->epoch);
    if (r.empty()) {
        if (fenced) fenced->inc();
        return fenced_error(claim->partition, "the lease (epoch " + std::to_string(claim->epoch) + ") expired or was taken over");
    }
    return ok();
}

const events::Event& Context::event() const { return *impl_->event; }
int Context::partition() const { return impl_->claim ? impl_->claim->partition : -1; }
int Context::attempt() const { return impl_->attempt; }
bool Context::retrying_parked() const { return impl_->parked; }
bool Context::owns() const { return impl_->owns(); }
std::chrono::steady_clock::time_point Context::deadline() const { return impl_->deadline; }
bool Context::stopping() const {
    return (impl_->stopping && impl_->stopping()) || !impl_->owns() || std::chrono::steady_clock::now() >= impl_->deadline;
}
Status Context::fence(pqxx::transaction_base& tx) { return impl_->fence(tx); }
pg::Pool& Context::db() { return *impl_->pool; }

Result<GlobalPosition> Context::append(std::string_view step, events::NewEvent e) {
    const auto& cause = *impl_->event;
    if (!impl_->owns()) {
        if (impl_->fenced) impl_->fenced->inc();
        return fenced_error(partition(), "the lease is not held any more (expired locally, lost or handed over)");
    }
    e.id = Uuid::v5(cause.id, step);
    if (!e.metadata.is_object()) e.metadata = json::object();
    auto& md = e.metadata;
    md[std::string(events::meta::causation_id)] = cause.id.str();
    if (!md.contains(events::meta::correlation_id)) {
        auto it = cause.metadata.find(events::meta::correlation_id);
        md[std::string(events::meta::correlation_id)] =
            it != cause.metadata.end() && it->is_string() && !it->get<std::string>().empty() ? it->get<std::string>()
                                                                                             : cause.id.str();
    }
    for (auto key : {events::meta::user_id, events::meta::session_id}) {
        if (md.contains(key)) continue;
        auto it = cause.metadata.find(key);
        if (it != cause.metadata.end() && it->is_string()) md[std::string(key)] = *it;
    }
    if (!md.contains(events::meta::source)) md[std::string(events::meta::source)] = *impl_->processor;

    auto r = impl_->client->post_json("/events", e.to_json());
    if (!r) return std::move(r).error();
    auto body = r->json();
    if (r->status != 201 && r->status != 200) {
        std::string code =
            body.is_object() && body.contains("error") && body["error"].is_string() ? body["error"].get<std::string>() : "";
        std::string detail = body.is_object() && body.contains("detail") && body["detail"].is_string()
                                 ? body["detail"].get<std::string>()
                                 : r->body;
        return Error{"event_store",
                     fmt::format("append of {} ({}) answered {}: {}{}", e.type, e.id->str(), r->status,
                                 code.empty() ? "" : code + ": ", detail),
                     {{"status", r->status}, {"error", code}}};
    }
    try {
        return GlobalPosition(body.at("events").at(0).at("position").get<std::int64_t>());
    } catch (const std::exception& ex) {
        return Error::make("event_store", std::string("unexpected append answer: ") + r->body);
    }
}

bool is_transient(const Error& e) {
    if (e.extra.is_object()) {
        auto t = e.extra.find("transient");
        if (t != e.extra.end() && t->is_boolean()) return t->get<bool>();
    }
    static const std::set<std::string> kCodes = {
        "unavailable",     "database",         "nats",    "connect", "io", "timeout", "cancelled",
        "llm_unreachable", "llm_rate_limited", "stopping"};
    if (kCodes.count(e.code)) return true;
    if (e.code == "event_store" || e.code == "embeddings") {
        int status = 0;
        if (e.extra.is_object() && e.extra.contains("status") && e.extra["status"].is_number_integer())
            status = e.extra["status"].get<int>();
        return status == 429 || status >= 500;
    }
    return false;
}

Error transient(Error e) {
    if (!e.extra.is_object()) e.extra = json::object();
    e.extra["transient"] = true;
    return e;
}

}  // namespace engram::processor
