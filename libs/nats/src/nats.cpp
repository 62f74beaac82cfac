#include "engram/nats/nats.h"

#include "engram/core/text.h"

#include <nats/nats.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>
#include <unistd.h>
#include <unordered_map>

namespace engram::nats {

namespace {

constexpr std::int64_t kNsPerMs = 1000000;

std::int64_t to_ms(std::chrono::milliseconds d) { return d.count() > 0 ? d.count() : 1; }

// Error{code "nats"} from a natsStatus, with the thread's last NATS.c error text when it belongs
// to this failure (same status), and the JetStream error code when there is one.
Error nats_error(natsStatus s, std::string_view what, jsErrCode jerr = static_cast<jsErrCode>(0)) {
    natsStatus last_status = NATS_OK;
    const char* last = nats_GetLastError(&last_status);
    std::string text = natsStatus_GetText(s);
    std::string detail = std::string(what) + ": " + text;
    if (last && *last && last_status == s && text != last) detail += std::string(": ") + last;
    Error e = Error::make("nats", detail);
    e.extra["status"] = static_cast<int>(s);
    if (jerr != 0) e.extra["js_error_code"] = static_cast<int>(jerr);
    return e;
}

Error plain_error(const std::string& detail) { return Error::make("nats", detail); }

Headers read_headers(natsMsg* m) {
    Headers out;
    const char** keys = nullptr;
    int count = 0;
    if (natsMsgHeader_Keys(m, &keys, &count) != NATS_OK) return out;
    for (int i = 0; i < count; ++i) {
        const char* v = nullptr;
        if (natsMsgHeader_Get(m, keys[i], &v) == NATS_OK && v)
            out.emplace(keys[i], v);
        else
            out.emplace(keys[i], "");
    }
    free(static_cast<void*>(keys));
    return out;
}

Message to_message(natsMsg* m) {
    Message out;
    if (const char* s = natsMsg_GetSubject(m)) out.subject = s;
    if (const char* r = natsMsg_GetReply(m)) out.reply = r;
    if (const char* d = natsMsg_GetData(m)) out.data.assign(d, static_cast<std::size_t>(natsMsg_GetDataLength(m)));
    out.headers = read_headers(m);
    return out;
}

// A natsMsg with subject, data and headers; nullptr + error on failure.
Result<natsMsg*> make_msg(const std::string& subject, std::string_view data, const Headers& headers) {
    natsMsg* m = nullptr;
    natsStatus s = natsMsg_Create(&m, subject.c_str(), nullptr, data.data(), static_cast<int>(data.size()));
    if (s != NATS_OK) return nats_error(s, "creating a message for " + subject);
    for (const auto& [k, v] : headers) {
        s = natsMsgHeader_Set(m, k.c_str(), v.c_str());
        if (s != NATS_OK) {
            natsMsg_Destroy(m);
            return nats_error(s, "setting header " + k);
        }
    }
    return m;
}

// ---- async publish acks ------------------------------------------------------------------------
// NATS.c calls the ack handler with the original natsMsg. Each Connection keeps the callbacks of
// its in-flight messages keyed by that pointer (unique while the message lives). The handler's
// closure is an id looked up in a registry, so a late call after ~Connection finds nothing instead
// of freed memory.

struct PubState {
    std::mutex mu;
    std::condition_variable cv;
    std::unordered_map<natsMsg*, AckCallback> callbacks;
    std::size_t pending = 0;
    bool closed = false;
    int active = 0;
};

std::mutex g_registry_mu;
std::unordered_map<std::uint64_t, std::shared_ptr<PubState>> g_registry;
std::uint64_t g_next_id = 1;

std::shared_ptr<PubState> find_pub_state(std::uint64_t id) {
    std::lock_guard lock(g_registry_mu);
    auto it = g_registry.find(id);
    return it == g_registry.end() ? nullptr : it->second;
}

void on_pub_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
    auto st = find_pub_state(reinterpret_cast<std::uintptr_t>(closure));
    if (!st) {
        natsMsg_Destroy(msg);
        return;
    }
    AckCallback cb;
    {
        std::lock_guard lock(st->mu);
        auto it = st->callbacks.find(msg);
        if (it != st->callbacks.end()) {
            cb = std::move(it->second);
            st->callbacks.erase(it);
        }
        if (st->pending > 0) --st->pending;
        if (st->closed) cb = nullptr;
        if (cb) ++st->active;
        st->cv.notify_all();
    }
    if (cb) {
        PubAck a;
        if (pa) {
            a.ok = true;
            if (pa->Stream) a.stream = pa->Stream;
            a.stream_seq = pa->Sequence;
            a.duplicate = pa->Duplicate;
        } else if (pae) {
            a.ok = false;
            a.timeout = pae->Err == NATS_TIMEOUT;
            a.js_error_code = static_cast<int>(pae->ErrCode);
            a.error = pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err);
        } else {
            a.error = "no acknowledgment";
        }
        try {
            cb(a);
        } catch (const std::exception& e) {
            spdlog::error("nats: publish ack callback threw: {}", e.what());
        } catch (...) {
            spdlog::error("nats: publish ack callback threw");
        }
        std::lock_guard lock(st->mu);
        --st->active;
        st->cv.notify_all();
    }
    natsMsg_Destroy(msg);
}

// ---- freeing subscriptions --------------------------------------------------------------------
// NATS.c before 3.6.1 (Debian 12 ships 3.4.1) looks an inbound message's subscription up in the
// connection's table and then, the table's lock released, locks the subscription without holding a
// reference (nats.c #637). A subscription destroyed in that window is used after it was freed: the
// reader thread crashes in natsMutex_Lock. A cursor closed just after its fetch timed out meets the
// server's late answer to that pull (its 408, or the last messages) exactly there, and after a
// freeze every owned partition's cursor closes at once. So a subscription is unsubscribed first
// (out of the table: no later message finds it), then a PING/PONG round trip shows the reader past
// every message that arrived before, and only then is it freed. When that cannot be shown (not
// connected, no PONG in time) it waits, unsubscribed, until a later round trip or the close of its
// connection (which joins the reader; a reconnect joins the old reader too).

std::mutex g_retired_mu;
std::unordered_map<natsConnection*, std::vector<natsSubscription*>> g_retired;  // unsubscribed, not yet freed

std::chrono::milliseconds retire_timeout(const ConnectOptions& o) {
    return std::min<std::chrono::milliseconds>(o.timeout, std::chrono::seconds(2));
}

void destroy_retired(natsConnection* nc, const std::vector<natsSubscription*>& subs) {
    if (subs.empty()) return;
    std::lock_guard lock(g_retired_mu);
    auto it = g_retired.find(nc);
    if (it == g_retired.end()) return;
    auto& list = it->second;
    for (auto* sub : subs) {
        auto at = std::find(list.begin(), list.end(), sub);
        if (at == list.end()) continue;  // freed by another round trip meanwhile
        list.erase(at);
        natsSubscription_Destroy(sub);
    }
    if (list.empty()) g_retired.erase(it);
}

// Unsubscribes and frees `sub` once the reader thread of `nc` cannot be using it any more.
void retire_subscription(natsConnection* nc, natsSubscription* sub, std::chrono::milliseconds timeout) {
    if (!sub) return;
    natsSubscription_Unsubscribe(sub);
    if (natsConnection_Status(nc) == NATS_CONN_STATUS_CLOSED) {  // closed: its reader was joined
        natsSubscription_Destroy(sub);
        return;
    }
    std::vector<natsSubscription*> earlier;  // unsubscribed before this round trip: it covers them too
    {
        std::lock_guard lock(g_retired_mu);
        auto it = g_retired.find(nc);
        if (it != g_retired.end()) earlier = it->second;
    }
    if (natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED && natsConnection_FlushTimeout(nc, to_ms(timeout)) == NATS_OK) {
        natsSubscription_Destroy(sub);
        destroy_retired(nc, earlier);
        return;
    }
    std::lock_guard lock(g_retired_mu);
    g_retired[nc].push_back(sub);
}

void on_connected(natsConnection* nc, void*) {
    char url[256] = {0};
    natsConnection_GetConnectedUrl(nc, url, sizeof url);
    spdlog::info("nats: connected to {}", redact_credentials(url));
}
void on_disconnected(natsConnection* nc, void*) {
    if (natsConnection_IsClosed(nc)) return;  // our own close
    spdlog::warn("nats: disconnected, reconnecting");
}
void on_reconnected(natsConnection* nc, void*) {
    char url[256] = {0};
    natsConnection_GetConnectedUrl(nc, url, sizeof url);
    spdlog::info("nats: reconnected to {}", redact_credentials(url));
}
void on_async_error(natsConnection*, natsSubscription*, natsStatus err, void*) {
    spdlog::warn("nats: asynchronous error: {}", natsStatus_GetText(err));
}

bool valid_name(const std::string& n) {
    if (n.empty()) return false;
    for (char c : n) {
        if (c == '.' || c == '*' || c == '>' || c == ' ' || c == '\t' || c == '/' || c == '\\') return false;
    }
    return true;
}

}  // namespace

// ---- subject matching --------------------------------------------------------------------------

bool subject_matches(std::string_view pattern, std::string_view subject) {
    auto split = [](std::string_view s) {
        std::vector<std::string_view> tokens;
        std::size_t start = 0;
        for (;;) {
            auto dot = s.find('.', start);
            tokens.push_back(s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
            if (dot == std::string_view::npos) break;
            start = dot + 1;
        }
        return tokens;
    };
    if (pattern.empty() || subject.empty()) return false;
    auto p = split(pattern), s = split(subject);
    for (std::size_t i = 0; i < p.size(); ++i) {
        if (p[i] == ">") return i + 1 == p.size() && s.size() > i;
        if (i >= s.size()) return false;
        if (p[i] != "*" && p[i] != s[i]) return false;
    }
    return p.size() == s.size();
}

// ---- Replier ----------------------------------------------------------------------------------

Replier::Replier(void* connection, std::string reply_subject) : nc_(connection), reply_(std::move(reply_subject)) {}

Status Replier::reply(std::string_view data, const Headers& headers) {
    if (reply_.empty()) return plain_error("reply: the message has no reply subject");
    auto m = make_msg(reply_, data, headers);
    if (!m) return m.error();
    natsStatus s = natsConnection_PublishMsg(static_cast<natsConnection*>(nc_), *m);
    natsMsg_Destroy(*m);
    if (s != NATS_OK) return nats_error(s, "reply");
    replied_ = true;
    return ok();
}

// ---- Subscription ------------------------------------------------------------------------------

struct Subscription::State {
    Handler handler;
    natsConnection* nc = nullptr;
    std::chrono::milliseconds retire_timeout{2000};
    natsSubscription* sub = nullptr;
    std::mutex mu;
    std::condition_variable cv;
    bool complete = false;
    bool detached = false;  // owner gone: on_complete frees the state
};

namespace {

thread_local Subscription::State* t_in_handler = nullptr;

void on_sub_msg(natsConnection* nc, natsSubscription*, natsMsg* msg, void* closure) {
    auto* st = static_cast<Subscription::State*>(closure);
    Message m = to_message(msg);
    natsMsg_Destroy(msg);
    Replier r(nc, m.reply);
    t_in_handler = st;
    try {
        st->handler(m, r);
    } catch (const std::exception& e) {
        spdlog::error("nats: handler for {} threw: {}", m.subject, e.what());
    } catch (...) {
        spdlog::error("nats: handler for {} threw", m.subject);
    }
    t_in_handler = nullptr;
}

void on_sub_complete(void* closure) {
    auto* st = static_cast<Subscription::State*>(closure);
    bool free_it = false;
    {
        std::lock_guard lock(st->mu);
        st->complete = true;
        free_it = st->detached;
        st->cv.notify_all();
    }
    if (free_it) delete st;
}

}  // namespace

Subscription::Subscription(State* state) : state_(state) {}

Subscription::~Subscription() {
    if (!state_) return;
    natsSubscription* sub = state_->sub;
    auto* nc = state_->nc;
    auto timeout = state_->retire_timeout;
    natsSubscription_Unsubscribe(sub);
    bool free_it = false;
    {
        std::unique_lock lock(state_->mu);
        if (t_in_handler != state_) {
            // Waits for the handler call in progress, if any, and the dispatcher's completion.
            state_->cv.wait_for(lock, std::chrono::seconds(5), [&] { return state_->complete; });
        }
        if (state_->complete)
            free_it = true;
        else
            state_->detached = true;
    }
    retire_subscription(nc, sub, timeout);
    if (free_it) delete state_;
}

// ---- Connection --------------------------------------------------------------------------------

std::vector<std::string> server_urls(const std::string& url) {
    std::vector<std::string> out;
    std::string userinfo;
    std::size_t start = 0;
    while (start <= url.size()) {
        auto end = url.find(',', start);
        if (end == std::string::npos) end = url.size();
        auto u = url.substr(start, end - start);
        while (!u.empty() && (u.front() == ' ' || u.front() == '\t')) u.erase(0, 1);
        while (!u.empty() && (u.back() == ' ' || u.back() == '\t')) u.pop_back();
        if (!u.empty()) {
            auto scheme = u.find("://");
            auto host_start = scheme == std::string::npos ? 0 : scheme + 3;
            auto at = u.find('@', host_start);
            if (at != std::string::npos && userinfo.empty()) userinfo = u.substr(host_start, at - host_start + 1);
            out.push_back(u);
        }
        start = end + 1;
    }
    if (!userinfo.empty())
        for (auto& u : out) {
            auto scheme = u.find("://");
            auto host_start = scheme == std::string::npos ? 0 : scheme + 3;
            if (u.find('@', host_start) == std::string::npos) u.insert(host_start, userinfo);
        }
    return out;
}

Result<std::unique_ptr<Connection>> Connection::connect(const ConnectOptions& o) {
    natsOptions* opts = nullptr;
    natsStatus s = natsOptions_Create(&opts);
    if (s != NATS_OK) return nats_error(s, "creating options");
    auto urls = server_urls(o.url);
    if (urls.empty()) {
        natsOptions_Destroy(opts);
        return plain_error("no NATS server URL in '" + redact_credentials(o.url) + "'");
    }
    std::vector<const char*> ptrs;
    for (const auto& u : urls) ptrs.push_back(u.c_str());
    s = natsOptions_SetServers(opts, ptrs.data(), static_cast<int>(ptrs.size()));
    if (s == NATS_OK && !o.name.empty()) s = natsOptions_SetName(opts, o.name.c_str());
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, to_ms(o.timeout));
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, to_ms(o.reconnect_wait));
    if (s == NATS_OK) s = natsOptions_SetReconnectJitter(opts, 50, 500);
    if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts, o.reconnect_buffer_bytes);
    if (s == NATS_OK) s = natsOptions_SetPingInterval(opts, 10000);
    if (s == NATS_OK) s = natsOptions_SetFailRequestsOnDisconnect(opts, true);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, on_disconnected, nullptr);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, on_reconnected, nullptr);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(opts, on_async_error, nullptr);
    if (s == NATS_OK && o.retry_on_failed_connect) s = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, nullptr);
    if (s != NATS_OK) {
        natsOptions_Destroy(opts);
        return nats_error(s, "setting connection options (url " + redact_credentials(o.url) + ")");
    }

    natsConnection* nc = nullptr;
    s = natsConnection_Connect(&nc, opts);
    natsOptions_Destroy(opts);
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) return nats_error(s, "connecting to " + redact_credentials(o.url));
    if (s == NATS_NOT_YET_CONNECTED)
        spdlog::warn("nats: {} not reachable yet, connecting in the background", redact_credentials(o.url));

    auto st = std::make_shared<PubState>();
    std::uint64_t id;
    {
        std::lock_guard lock(g_registry_mu);
        id = g_next_id++;
        g_registry[id] = st;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = to_ms(o.timeout);
    jo.PublishAsync.MaxPending = o.max_pending_acks;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = reinterpret_cast<void*>(static_cast<std::uintptr_t>(id));
    jo.PublishAsync.StallWait = to_ms(o.publish_stall_wait);
    jsCtx* js = nullptr;
    s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK) {
        Error e = nats_error(s, "creating the JetStream context");
        natsConnection_Destroy(nc);
        std::lock_guard lock(g_registry_mu);
        g_registry.erase(id);
        return e;
    }
    std::unique_ptr<Connection> c(new Connection());
    c->options_ = o;
    c->nc_ = nc;
    c->js_ = js;
    c->pub_state_id_ = id;
    return c;
}

Connection::~Connection() {
    if (auto st = find_pub_state(pub_state_id_)) {
        std::unique_lock lock(st->mu);
        st->closed = true;
        st->cv.wait(lock, [&] { return st->active == 0; });
    }
    {
        std::lock_guard lock(g_registry_mu);
        g_registry.erase(pub_state_id_);
    }
    natsConnection_Close(static_cast<natsConnection*>(nc_));
    std::vector<natsSubscription*> retired;  // the reader is joined now: nothing can use them
    {
        std::lock_guard lock(g_retired_mu);
        auto it = g_retired.find(static_cast<natsConnection*>(nc_));
        if (it != g_retired.end()) {
            retired = std::move(it->second);
            g_retired.erase(it);
        }
    }
    for (auto* sub : retired) natsSubscription_Destroy(sub);
    jsCtx_Destroy(static_cast<jsCtx*>(js_));
    natsConnection_Destroy(static_cast<natsConnection*>(nc_));
}

bool Connection::connected() const {
    return natsConnection_Status(static_cast<natsConnection*>(nc_)) == NATS_CONN_STATUS_CONNECTED;
}

std::int64_t Connection::max_payload() const {
    // NATS.c keeps the last server INFO across disconnects; it answers 0 before the first one.
    return std::max<std::int64_t>(0, natsConnection_GetMaxPayload(static_cast<natsConnection*>(nc_)));
}

Status Connection::flush(std::chrono::milliseconds timeout) {
    natsStatus s = natsConnection_FlushTimeout(static_cast<natsConnection*>(nc_), to_ms(timeout));
    if (s != NATS_OK) return nats_error(s, "flush");
    return ok();
}

Status Connection::ensure_stream(const std::string& name, const std::vector<std::string>& subjects) {
    StreamConfig c;
    c.name = name;
    c.subjects = subjects;
    return ensure_stream(c);
}

Status Connection::ensure_stream(const StreamConfig& c) {
    if (!valid_name(c.name)) return plain_error("invalid stream name '" + c.name + "'");
    auto* js = static_cast<jsCtx*>(js_);
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_GetStreamInfo(&si, js, c.name.c_str(), nullptr, &jerr);
    if (s == NATS_OK) {
        std::vector<std::string> have;
        int replicas = 1;
        if (si->Config) {
            for (int i = 0; i < si->Config->SubjectsLen; ++i) have.emplace_back(si->Config->Subjects[i]);
            replicas = static_cast<int>(std::max<std::int64_t>(si->Config->Replicas, 1));
        }
        jsStreamInfo_Destroy(si);
        if (have != c.subjects) spdlog::warn("nats: stream {} exists with other subjects; left as it is", c.name);
        if (replicas != c.replicas)
            spdlog::warn("nats: stream {} exists with {} replica(s), {} wanted; left as it is (change it with the nats CLI)",
                         c.name, replicas, c.replicas);
        return ok();
    }
    if (s != NATS_NOT_FOUND) return nats_error(s, "looking up stream " + c.name, jerr);

    std::vector<const char*> subjects;
    for (const auto& sub : c.subjects) subjects.push_back(sub.c_str());
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = c.name.c_str();
    cfg.Subjects = subjects.data();
    cfg.SubjectsLen = static_cast<int>(subjects.size());
    cfg.Retention = js_LimitsPolicy;
    cfg.Storage = c.memory_storage ? js_MemoryStorage : js_FileStorage;
    cfg.Duplicates = c.duplicate_window.count() * kNsPerMs;
    cfg.MaxAge = c.max_age.count() * kNsPerMs;
    cfg.MaxMsgs = c.max_msgs;
    cfg.MaxBytes = c.max_bytes;
    cfg.Replicas = std::max(c.replicas, 1);
    jerr = static_cast<jsErrCode>(0);
    s = js_AddStream(&si, js, &cfg, nullptr, &jerr);
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        spdlog::info("nats: created stream {}", c.name);
        return ok();
    }
    if (jerr == JSStreamNameExistErr) return ok();  // created concurrently by someone else
    return nats_error(s, "creating stream " + c.name, jerr);
}

Result<StreamInfo> Connection::stream_info(const std::string& name) {
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_GetStreamInfo(&si, static_cast<jsCtx*>(js_), name.c_str(), nullptr, &jerr);
    if (s != NATS_OK) return nats_error(s, "stream info " + name, jerr);
    StreamInfo out;
    out.name = name;
    if (si->Config) {
        for (int i = 0; i < si->Config->SubjectsLen; ++i) out.subjects.emplace_back(si->Config->Subjects[i]);
        out.duplicate_window = std::chrono::milliseconds(si->Config->Duplicates / kNsPerMs);
        out.replicas = static_cast<int>(std::max<std::int64_t>(si->Config->Replicas, 1));
    }
    if (si->Cluster && si->Cluster->Leader) out.leader = si->Cluster->Leader;
    out.messages = si->State.Msgs;
    out.bytes = si->State.Bytes;
    out.first_seq = si->State.FirstSeq;
    out.last_seq = si->State.LastSeq;
    out.consumers = si->State.Consumers;
    jsStreamInfo_Destroy(si);
    return out;
}

Status Connection::delete_stream(const std::string& name) {
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_DeleteStream(static_cast<jsCtx*>(js_), name.c_str(), nullptr, &jerr);
    if (s != NATS_OK) return nats_error(s, "deleting stream " + name, jerr);
    return ok();
}

Result<std::vector<Message>> Connection::get_stream_messages(const std::string& stream, std::uint64_t from_seq, std::size_t max) {
    auto info = stream_info(stream);
    if (!info) return info.error();
    std::vector<Message> out;
    for (std::uint64_t seq = std::max<std::uint64_t>(from_seq, info->first_seq); seq <= info->last_seq && out.size() < max;
         ++seq) {
        natsMsg* m = nullptr;
        jsErrCode jerr = static_cast<jsErrCode>(0);
        natsStatus s = js_GetMsg(&m, static_cast<jsCtx*>(js_), stream.c_str(), seq, nullptr, &jerr);
        if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) continue;  // deleted
        if (s != NATS_OK) return nats_error(s, "reading " + stream + " #" + std::to_string(seq), jerr);
        Message msg = to_message(m);
        msg.stream_seq = natsMsg_GetSequence(m) ? natsMsg_GetSequence(m) : seq;
        msg.timestamp_ns = natsMsg_GetTime(m);
        natsMsg_Destroy(m);
        out.push_back(std::move(msg));
    }
    return out;
}

Result<Message> Connection::get_stream_message(const std::string& stream, std::uint64_t seq) {
    natsMsg* m = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_GetMsg(&m, static_cast<jsCtx*>(js_), stream.c_str(), seq, nullptr, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr)
        return Error::make("not_found", stream + " has no message #" + std::to_string(seq));
    if (s != NATS_OK) return nats_error(s, "reading " + stream + " #" + std::to_string(seq), jerr);
    Message msg = to_message(m);
    msg.stream_seq = natsMsg_GetSequence(m) ? natsMsg_GetSequence(m) : seq;
    msg.timestamp_ns = natsMsg_GetTime(m);
    natsMsg_Destroy(m);
    return msg;
}

namespace {

void fill_pub_options(jsPubOptions& po, const PublishOptions& o, std::chrono::milliseconds wait) {
    jsPubOptions_Init(&po);
    if (!o.msg_id.empty()) po.MsgId = o.msg_id.c_str();
    if (!o.expected_last_msg_id.empty()) po.ExpectLastMsgId = o.expected_last_msg_id.c_str();
    po.ExpectLastSeq = o.expected_last_seq;
    po.MaxWait = to_ms(wait);
}

}  // namespace

Status Connection::publish_async(const std::string& subject, std::string_view data, const std::string& msg_id, AckCallback on_ack,
                                 const Headers& headers) {
    PublishOptions o;
    o.msg_id = msg_id;
    o.headers = headers;
    return publish_async(subject, data, o, std::move(on_ack));
}

Status Connection::publish_async(const std::string& subject, std::string_view data, const PublishOptions& options,
                                 AckCallback on_ack) {
    auto st = find_pub_state(pub_state_id_);
    if (!st) return plain_error("publish on a closed connection");
    auto m = make_msg(subject, data, options.headers);
    if (!m) return m.error();
    natsMsg* msg = *m;
    {
        std::lock_guard lock(st->mu);
        if (on_ack) st->callbacks[msg] = std::move(on_ack);
        ++st->pending;
    }
    jsPubOptions po;
    fill_pub_options(po, options, options_.publish_ack_timeout);
    natsMsg* owned = msg;
    natsStatus s = js_PublishMsgAsync(static_cast<jsCtx*>(js_), &owned, &po);
    if (s != NATS_OK) {
        // `owned` still set: the library did not take the message and will not call the handler.
        Error e = nats_error(s, "publishing to " + subject);
        {
            std::lock_guard lock(st->mu);
            st->callbacks.erase(msg);
            if (st->pending > 0) --st->pending;
            st->cv.notify_all();
        }
        natsMsg_Destroy(owned);
        return e;
    }
    return ok();
}

Status Connection::wait_publish_complete(std::chrono::milliseconds timeout) {
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = to_ms(timeout);
    natsStatus s = js_PublishAsyncComplete(static_cast<jsCtx*>(js_), &po);
    if (s == NATS_TIMEOUT)
        return plain_error(std::to_string(publish_pending()) + " published messages still unacknowledged after " +
                           std::to_string(timeout.count()) + " ms");
    if (s != NATS_OK) return nats_error(s, "waiting for publish acks");
    // NATS.c counts a message as done just after its ack handler returns; wait for the callback
    // bookkeeping too, so publish_pending() is 0 when this returns ok.
    if (auto st = find_pub_state(pub_state_id_)) {
        std::unique_lock lock(st->mu);
        st->cv.wait_for(lock, timeout, [&] { return st->pending == 0; });
    }
    return ok();
}

std::size_t Connection::publish_pending() const {
    auto st = find_pub_state(pub_state_id_);
    if (!st) return 0;
    std::lock_guard lock(st->mu);
    return st->pending;
}

Result<PubAck> Connection::publish_sync(const std::string& subject, std::string_view data, const std::string& msg_id,
                                        const Headers& headers) {
    PublishOptions o;
    o.msg_id = msg_id;
    o.headers = headers;
    return publish_sync(subject, data, o);
}

Result<PubAck> Connection::publish_sync(const std::string& subject, std::string_view data, const PublishOptions& options) {
    auto m = make_msg(subject, data, options.headers);
    if (!m) return m.error();
    jsPubOptions po;
    fill_pub_options(po, options, options_.publish_ack_timeout);
    jsPubAck* pa = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_PublishMsg(&pa, static_cast<jsCtx*>(js_), *m, &po, &jerr);
    natsMsg_Destroy(*m);
    if (s != NATS_OK) return nats_error(s, "publishing to " + subject, jerr);
    PubAck a;
    a.ok = true;
    if (pa->Stream) a.stream = pa->Stream;
    a.stream_seq = pa->Sequence;
    a.duplicate = pa->Duplicate;
    jsPubAck_Destroy(pa);
    return a;
}

Status Connection::publish(const std::string& subject, std::string_view data, const Headers& headers) {
    auto m = make_msg(subject, data, headers);
    if (!m) return m.error();
    natsStatus s = natsConnection_PublishMsg(static_cast<natsConnection*>(nc_), *m);
    natsMsg_Destroy(*m);
    if (s != NATS_OK) return nats_error(s, "publishing to " + subject);
    return ok();
}

Result<Message> Connection::request(const std::string& subject, std::string_view data, std::chrono::milliseconds timeout,
                                    const Headers& headers) {
    auto m = make_msg(subject, data, headers);
    if (!m) return m.error();
    natsMsg* reply = nullptr;
    natsStatus s = natsConnection_RequestMsg(&reply, static_cast<natsConnection*>(nc_), *m, to_ms(timeout));
    natsMsg_Destroy(*m);
    if (s != NATS_OK) return nats_error(s, "request to " + subject);
    Message out = to_message(reply);
    natsMsg_Destroy(reply);
    return out;
}

Result<std::unique_ptr<Subscription>> Connection::subscribe(const std::string& subject, const std::string& queue_group,
                                                            Handler handler) {
    if (!handler) return plain_error("subscribe: no handler");
    auto* st = new Subscription::State();
    st->handler = std::move(handler);
    auto* nc = static_cast<natsConnection*>(nc_);
    st->nc = nc;
    st->retire_timeout = retire_timeout(options_);
    natsStatus s = queue_group.empty()
                       ? natsConnection_Subscribe(&st->sub, nc, subject.c_str(), on_sub_msg, st)
                       : natsConnection_QueueSubscribe(&st->sub, nc, subject.c_str(), queue_group.c_str(), on_sub_msg, st);
    if (s != NATS_OK) {
        Error e = nats_error(s, "subscribing to " + subject);
        delete st;
        return e;
    }
    s = natsSubscription_SetOnCompleteCB(st->sub, on_sub_complete, st);
    if (s != NATS_OK) {
        // Without the completion callback we cannot know when the handler is done: undo.
        Error e = nats_error(s, "subscribing to " + subject);
        retire_subscription(nc, st->sub, st->retire_timeout);
        return e;  // `st` is leaked on purpose: a handler call might still be running
    }
    return std::make_unique<Subscription>(st);
}

// ---- InMessage ---------------------------------------------------------------------------------

InMessage::InMessage(void* native_msg, Message msg, std::chrono::milliseconds wait)
    : m_(native_msg), msg_(std::move(msg)), wait_(wait) {}

InMessage::~InMessage() { natsMsg_Destroy(static_cast<natsMsg*>(m_)); }

Status InMessage::ack() {
    natsStatus s = natsMsg_Ack(static_cast<natsMsg*>(m_), nullptr);
    if (s != NATS_OK) return nats_error(s, "ack " + msg_.subject);
    return ok();
}

Status InMessage::ack_sync() {
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = to_ms(wait_);
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = natsMsg_AckSync(static_cast<natsMsg*>(m_), &jo, &jerr);
    if (s != NATS_OK) return nats_error(s, "ack " + msg_.subject, jerr);
    return ok();
}

Status InMessage::nak(std::chrono::milliseconds delay) {
    natsStatus s = delay.count() > 0 ? natsMsg_NakWithDelay(static_cast<natsMsg*>(m_), delay.count(), nullptr)
                                     : natsMsg_Nak(static_cast<natsMsg*>(m_), nullptr);
    if (s != NATS_OK) return nats_error(s, "nak " + msg_.subject);
    return ok();
}

Status InMessage::in_progress() {
    natsStatus s = natsMsg_InProgress(static_cast<natsMsg*>(m_), nullptr);
    if (s != NATS_OK) return nats_error(s, "in-progress " + msg_.subject);
    return ok();
}

Status InMessage::term() {
    natsStatus s = natsMsg_Term(static_cast<natsMsg*>(m_), nullptr);
    if (s != NATS_OK) return nats_error(s, "term " + msg_.subject);
    return ok();
}

// ---- PullConsumer ------------------------------------------------------------------------------

Result<std::unique_ptr<PullConsumer>> PullConsumer::create(Connection& conn, const ConsumerOptions& o) {
    if (!valid_name(o.stream)) return plain_error("invalid stream name '" + o.stream + "'");
    if (!valid_name(o.durable)) return plain_error("invalid durable consumer name '" + o.durable + "'");
    if (!o.backoff.empty() && o.max_deliver > 0 && o.max_deliver <= static_cast<int>(o.backoff.size()))
        return plain_error("consumer " + o.durable + ": max_deliver must exceed the number of backoff steps");
    for (const auto& f : o.filter_subjects)
        if (f.empty()) return plain_error("consumer " + o.durable + ": empty filter subject");
    auto* js = static_cast<jsCtx*>(conn.native_jetstream());

    std::string filter = o.filter_subjects.size() == 1 ? o.filter_subjects[0] : "";
    std::vector<std::int64_t> backoff;
    for (auto d : o.backoff) backoff.push_back(d.count() * kNsPerMs);
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = o.durable.c_str();
    cc.AckPolicy = js_AckExplicit;
    cc.DeliverPolicy = js_DeliverAll;
    cc.AckWait = (backoff.empty() ? o.ack_wait.count() * kNsPerMs : backoff.front());
    cc.MaxDeliver = o.max_deliver;
    if (!backoff.empty()) {
        cc.BackOff = backoff.data();
        cc.BackOffLen = static_cast<int>(backoff.size());
    }
    if (!filter.empty()) cc.FilterSubject = filter.c_str();
    if (o.max_ack_pending > 0) cc.MaxAckPending = o.max_ack_pending;

    jsConsumerInfo* ci = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_GetConsumerInfo(&ci, js, o.stream.c_str(), o.durable.c_str(), nullptr, &jerr);
    if (s == NATS_NOT_FOUND) {
        jerr = static_cast<jsErrCode>(0);
        s = js_AddConsumer(&ci, js, o.stream.c_str(), &cc, nullptr, &jerr);
        if (s != NATS_OK) return nats_error(s, "creating consumer " + o.durable + " on " + o.stream, jerr);
        jsConsumerInfo_Destroy(ci);
    } else if (s == NATS_OK) {
        std::string have = (ci->Config && ci->Config->FilterSubject) ? ci->Config->FilterSubject : "";
        jsConsumerInfo_Destroy(ci);
        if (have != filter)
            return plain_error("consumer " + o.durable + " on " + o.stream + " exists with filter '" + have + "', wanted '" +
                               filter +
                               "': nats-server 2.9 cannot change a consumer's filter; delete the consumer to recreate it");
        jerr = static_cast<jsErrCode>(0);
        s = js_UpdateConsumer(&ci, js, o.stream.c_str(), &cc, nullptr, &jerr);
        if (s != NATS_OK) return nats_error(s, "updating consumer " + o.durable + " on " + o.stream, jerr);
        jsConsumerInfo_Destroy(ci);
    } else {
        return nats_error(s, "looking up consumer " + o.durable + " on " + o.stream, jerr);
    }

    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = o.stream.c_str();
    so.Consumer = o.durable.c_str();
    natsSubscription* sub = nullptr;
    jerr = static_cast<jsErrCode>(0);
    s = js_PullSubscribe(&sub, js, filter.empty() ? nullptr : filter.c_str(), o.durable.c_str(), nullptr, &so, &jerr);
    if (s != NATS_OK) return nats_error(s, "binding to consumer " + o.durable + " on " + o.stream, jerr);

    std::unique_ptr<PullConsumer> pc(new PullConsumer());
    pc->conn_ = &conn;
    pc->options_ = o;
    pc->client_filter_ = o.filter_subjects.size() > 1;
    pc->sub_ = sub;
    return pc;
}

PullConsumer::~PullConsumer() {
    // The durable consumer stays on the server: the subscription is bound to it (NATS.c deletes on
    // unsubscribe only a consumer it created itself).
    retire_subscription(static_cast<natsConnection*>(conn_->native_connection()), static_cast<natsSubscription*>(sub_),
                        retire_timeout(conn_->options()));
}

Result<std::vector<std::unique_ptr<InMessage>>> PullConsumer::fetch(int batch, std::chrono::milliseconds timeout) {
    natsMsgList list{nullptr, 0};
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = natsSubscription_Fetch(&list, static_cast<natsSubscription*>(sub_), std::max(batch, 1), to_ms(timeout), &jerr);
    std::vector<std::unique_ptr<InMessage>> out;
    if (s != NATS_OK && list.Count == 0) {
        if (s == NATS_TIMEOUT) return out;
        return nats_error(s, "fetching from " + options_.durable, jerr);
    }
    for (int i = 0; i < list.Count; ++i) {
        natsMsg* m = list.Msgs[i];
        if (!m) continue;
        list.Msgs[i] = nullptr;
        Message msg = to_message(m);
        jsMsgMetaData* meta = nullptr;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
            msg.stream_seq = meta->Sequence.Stream;
            msg.delivered = meta->NumDelivered;
            msg.pending = meta->NumPending;
            msg.timestamp_ns = meta->Timestamp;
            jsMsgMetaData_Destroy(meta);
        }
        if (client_filter_) {
            bool wanted = false;
            for (const auto& f : options_.filter_subjects) wanted = wanted || subject_matches(f, msg.subject);
            if (!wanted) {
                natsMsg_Ack(m, nullptr);
                natsMsg_Destroy(m);
                continue;
            }
        }
        out.push_back(std::make_unique<InMessage>(m, std::move(msg), conn_->options().timeout));
    }
    natsMsgList_Destroy(&list);
    return out;
}

Result<ConsumerInfo> PullConsumer::info() {
    jsConsumerInfo* ci = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_GetConsumerInfo(&ci, static_cast<jsCtx*>(conn_->native_jetstream()), options_.stream.c_str(),
                                      options_.durable.c_str(), nullptr, &jerr);
    if (s != NATS_OK) return nats_error(s, "consumer info " + options_.durable, jerr);
    ConsumerInfo out;
    out.stream = ci->Stream ? ci->Stream : options_.stream;
    out.name = ci->Name ? ci->Name : options_.durable;
    if (ci->Config && ci->Config->FilterSubject) out.filter_subject = ci->Config->FilterSubject;
    out.num_pending = ci->NumPending;
    out.num_ack_pending = ci->NumAckPending;
    out.num_redelivered = ci->NumRedelivered;
    out.delivered_stream_seq = ci->Delivered.Stream;
    out.ack_floor_stream_seq = ci->AckFloor.Stream;
    jsConsumerInfo_Destroy(ci);
    return out;
}

// ------------------------------------------------------------------------------------------
// Cursor

Result<std::unique_ptr<Cursor>> Cursor::open(Connection& conn, const CursorOptions& o) {
    if (!valid_name(o.stream)) return plain_error("invalid stream name '" + o.stream + "'");
    if (o.filter.empty()) return plain_error("a cursor needs a filter subject");
    auto* js = static_cast<jsCtx*>(conn.native_jetstream());
    static std::atomic<std::uint64_t> counter{0};
    std::string name = "cursor_" + std::to_string(::getpid()) + "_" + std::to_string(++counter) + "_" +
                       std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007);
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Name = name.c_str();
    cc.AckPolicy = js_AckNone;
    cc.DeliverPolicy = o.start_seq > 1 ? js_DeliverByStartSequence : js_DeliverAll;
    cc.OptStartSeq = o.start_seq > 1 ? o.start_seq : 0;
    cc.FilterSubject = o.filter.c_str();
    cc.InactiveThreshold = o.inactive_threshold.count() * kNsPerMs;
    cc.MemoryStorage = true;
    cc.Replicas = 1;
    jsConsumerInfo* ci = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_AddConsumer(&ci, js, o.stream.c_str(), &cc, nullptr, &jerr);
    if (s != NATS_OK) return nats_error(s, "creating a cursor on " + o.stream + " (" + o.filter + ")", jerr);
    // Read back what the server made of it.
    std::string mismatch;
    if (!ci->Config) {
        mismatch = "no configuration in the answer";
    } else {
        const auto* got = ci->Config;
        std::string filter = got->FilterSubject ? got->FilterSubject : "";
        if (filter != o.filter) mismatch = "filter '" + filter + "' instead of '" + o.filter + "'";
        if (got->AckPolicy != js_AckNone) mismatch = "an ack policy other than none";
        if (o.start_seq > 1 && (got->DeliverPolicy != js_DeliverByStartSequence || got->OptStartSeq != o.start_seq))
            mismatch = "another start sequence than " + std::to_string(o.start_seq);
    }
    std::string actual_name = ci->Name ? ci->Name : name;
    jsConsumerInfo_Destroy(ci);
    auto drop = [&] { (void)js_DeleteConsumer(js, o.stream.c_str(), actual_name.c_str(), nullptr, nullptr); };
    if (!mismatch.empty()) {
        drop();
        return Error::make("cursor_config", "the NATS server created the cursor on " + o.stream + " with " + mismatch +
                                                ": this server does not support what engram needs");
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = o.stream.c_str();
    so.Consumer = actual_name.c_str();
    // The library compares the settings given here with the consumer's: give it the same ones.
    so.Config = cc;
    so.Config.Name = actual_name.c_str();
    natsSubscription* sub = nullptr;
    jerr = static_cast<jsErrCode>(0);
    s = js_PullSubscribe(&sub, js, o.filter.c_str(), nullptr, nullptr, &so, &jerr);
    if (s != NATS_OK) {
        drop();
        return nats_error(s, "binding to cursor " + actual_name + " on " + o.stream, jerr);
    }
    std::unique_ptr<Cursor> c(new Cursor());
    c->conn_ = &conn;
    c->options_ = o;
    c->name_ = actual_name;
    c->sub_ = sub;
    c->next_seq_ = std::max<std::uint64_t>(o.start_seq, 1);
    return c;
}

Cursor::~Cursor() {
    retire_subscription(static_cast<natsConnection*>(conn_->native_connection()), static_cast<natsSubscription*>(sub_),
                        retire_timeout(conn_->options()));
    if (conn_ && conn_->connected())
        (void)js_DeleteConsumer(static_cast<jsCtx*>(conn_->native_jetstream()), options_.stream.c_str(), name_.c_str(), nullptr,
                                nullptr);
}

Status Cursor::check() {
    jsConsumerInfo* ci = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_GetConsumerInfo(&ci, static_cast<jsCtx*>(conn_->native_jetstream()), options_.stream.c_str(), name_.c_str(),
                                      nullptr, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr)
        return Error::make("cursor_gone",
                           "cursor " + name_ + " no longer exists on the server: reopen at " + std::to_string(next_seq_));
    if (s == NATS_TIMEOUT || s == NATS_NO_RESPONDERS)
        return Error::make("cursor_unreachable", "cursor " + name_ + " does not answer (its server may be gone): reopen at " +
                                                     std::to_string(next_seq_));
    if (s != NATS_OK) return nats_error(s, "checking cursor " + name_, jerr);
    // Delivered by the server but never received: with no acks, a batch sent to a pull request
    // whose reply route died with a cluster node is lost, and no later delivery may come to show the
    // gap. Called while idle, so nothing is in flight: reopen from the next unseen sequence.
    std::uint64_t delivered = ci->Delivered.Consumer;
    jsConsumerInfo_Destroy(ci);
    if (delivered > consumer_seq_)
        return Error::make("cursor_gap", "cursor " + name_ + ": the server delivered " + std::to_string(delivered) +
                                             " messages, " + std::to_string(consumer_seq_) + " arrived: reopen at " +
                                             std::to_string(next_seq_));
    return ok();
}

Result<std::string> Cursor::server() {
    jsConsumerInfo* ci = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_GetConsumerInfo(&ci, static_cast<jsCtx*>(conn_->native_jetstream()), options_.stream.c_str(), name_.c_str(),
                                      nullptr, &jerr);
    if (s != NATS_OK) return nats_error(s, "asking cursor " + name_ + " for its server", jerr);
    std::string leader = ci->Cluster && ci->Cluster->Leader ? ci->Cluster->Leader : "";
    jsConsumerInfo_Destroy(ci);
    return leader;
}

Result<std::vector<Message>> Cursor::fetch(int batch, std::chrono::milliseconds timeout) {
    natsMsgList list{nullptr, 0};
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = natsSubscription_Fetch(&list, static_cast<natsSubscription*>(sub_), std::max(batch, 1), to_ms(timeout), &jerr);
    std::vector<Message> out;
    if (s != NATS_OK && list.Count == 0) {
        if (s == NATS_TIMEOUT) return out;
        return nats_error(s, "fetching from cursor " + name_, jerr);
    }
    std::optional<Error> gap;
    for (int i = 0; i < list.Count; ++i) {
        natsMsg* m = list.Msgs[i];
        if (!m || gap) continue;
        jsMsgMetaData* meta = nullptr;
        if (natsMsg_GetMetaData(&meta, m) != NATS_OK) continue;  // a status message, not data
        auto cseq = meta->Sequence.Consumer;
        auto sseq = meta->Sequence.Stream;
        Message msg = to_message(m);
        msg.stream_seq = sseq;
        msg.delivered = meta->NumDelivered;
        msg.pending = meta->NumPending;
        msg.timestamp_ns = meta->Timestamp;
        jsMsgMetaData_Destroy(meta);
        if (sseq < next_seq_) continue;  // already returned (cannot happen without acks; harmless)
        if (cseq != consumer_seq_ + 1) {
            gap = Error::make("cursor_gap", "cursor " + name_ + " skipped deliveries (consumer sequence " + std::to_string(cseq) +
                                                " after " + std::to_string(consumer_seq_) + "): reopen at " +
                                                std::to_string(next_seq_));
            continue;
        }
        consumer_seq_ = cseq;
        next_seq_ = sseq + 1;
        pending_ = msg.pending;
        out.push_back(std::move(msg));
    }
    natsMsgList_Destroy(&list);
    if (gap && out.empty()) return std::move(*gap);
    return out;  // a gap after some messages surfaces on the next fetch
}

}  // namespace engram::nats
