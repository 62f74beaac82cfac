#include "webchat_deltas.h"

#include "engram/core/json.h"
#include "engram/log/log.h"
#include "engram/nats/nats.h"

#include <algorithm>
#include <list>
#include <map>
#include <mutex>
#include <vector>

namespace engram::gateway {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::size_t utf8_cut(const std::string& s, std::size_t n) {
    if (n >= s.size()) return s.size();
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
    return n;
}

std::string str(const json& j, const char* k) {
    return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
}

std::string sse(const char* event, const json& data) {
    return std::string("event: ") + event + "\ndata: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace

struct DeltaHub::Impl {
    struct Call {
        std::string id, name, arguments;
    };
    struct Answer {
        std::string run_id;
        std::int64_t iteration = 0;
        std::string content;
        std::map<std::int64_t, Call> calls;
        std::size_t kept = 0;
        bool truncated = false, ended = false;
        Clock::time_point touched;
    };
    struct Client {
        std::shared_ptr<http::Stream> stream;
        double tokens = kClientBurst;
        Clock::time_point refilled = Clock::now();
        bool behind = false;  // deltas were dropped: the next thing it gets is a snapshot
    };

    mutable std::mutex mu;
    std::map<std::string, Answer> answers;                              // by session id
    std::map<std::string, std::list<std::shared_ptr<Client>>> clients;  // by session id
    std::size_t client_count = 0;
    std::unique_ptr<nats::Connection> nc;
    std::unique_ptr<nats::Subscription> sub;

    static json snapshot(const Answer& a) {
        json calls = json::array();
        for (const auto& [index, c] : a.calls)
            calls.push_back({{"index", index}, {"id", c.id}, {"name", c.name}, {"arguments", c.arguments}});
        json s = {{"run_id", a.run_id}, {"iteration", a.iteration}, {"content", a.content}, {"tool_calls", calls}};
        if (a.truncated) s["truncated"] = true;
        return s;
    }

    bool spend(Client& c, std::size_t bytes) {
        auto now = Clock::now();
        c.tokens =
            std::min(kClientBurst, c.tokens + kClientBytesPerSecond * std::chrono::duration<double>(now - c.refilled).count());
        c.refilled = now;
        if (c.tokens < static_cast<double>(bytes)) return false;
        c.tokens -= static_cast<double>(bytes);
        return true;
    }

    void keep(Answer& a, std::string& into, const std::string& piece) {
        if (a.truncated) return;
        std::size_t room = kMaxKept - a.kept;
        std::size_t cut = utf8_cut(piece, room);
        into += piece.substr(0, cut);
        a.kept += cut;
        if (cut < piece.size()) a.truncated = true;
    }

    void on_message(const std::string& data) {
        if (data.size() > kMaxMessage) return;
        auto parsed = parse_json(data, "a delta");
        if (!parsed || !parsed->is_object()) return;
        const json& m = *parsed;
        const std::string session = str(m, "session_id"), run_id = str(m, "run_id");
        // Only the web chat shows them.
        if (session.rfind("session:web:", 0) != 0 || run_id.empty() || !m.contains("iteration") ||
            !m["iteration"].is_number_integer())
            return;
        const std::int64_t iteration = m["iteration"].get<std::int64_t>();
        // What goes to browsers: the fields the page reads, nothing else a publisher put in.
        json out = {{"run_id", run_id}, {"iteration", iteration}};
        std::lock_guard lk(mu);
        auto now = Clock::now();
        auto found = answers.find(session);
        if (found == answers.end()) {
            if (answers.size() >= kMaxSessions) {
                auto oldest = std::min_element(answers.begin(), answers.end(),
                                               [](const auto& a, const auto& b) { return a.second.touched < b.second.touched; });
                answers.erase(oldest);
            }
            found = answers.emplace(session, Answer{}).first;
        }
        Answer& a = found->second;
        if (a.run_id != run_id || a.iteration != iteration || m.value("restart", false)) {
            a = Answer{};
            a.run_id = run_id;
            a.iteration = iteration;
            if (m.value("restart", false)) out["restart"] = true;
        }
        a.touched = now;
        if (m.contains("content") && m["content"].is_string()) {
            const auto& piece = m["content"].get_ref<const std::string&>();
            keep(a, a.content, piece);
            out["content"] = piece;
        }
        if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
            json calls = json::array();
            for (const auto& t : m["tool_calls"]) {
                if (!t.is_object() || !t.contains("index") || !t["index"].is_number_integer()) continue;
                auto index = t["index"].get<std::int64_t>();
                if (index < 0 || index >= 128) continue;
                Call& c = a.calls[index];
                json o = {{"index", index}};
                if (auto id = str(t, "id"); !id.empty() && id.size() <= 256) c.id = o["id"] = id;
                if (auto name = str(t, "name"); !name.empty() && name.size() <= 256) c.name = o["name"] = name;
                if (auto args = str(t, "arguments"); !args.empty()) {
                    keep(a, c.arguments, args);
                    o["arguments"] = args;
                }
                calls.push_back(std::move(o));
            }
            if (!calls.empty()) out["tool_calls"] = std::move(calls);
        }
        if (m.value("truncated", false) || a.truncated) out["truncated"] = a.truncated = true;
        if (m.value("end", false)) out["end"] = a.ended = true;
        forward(session, a, sse("delta", out));
        // An answer that ended is in the log now (or about to be): nothing to show a new stream.
        if (a.ended) answers.erase(found);
    }

    void forward(const std::string& session, const Answer& a, const std::string& frame) {
        auto it = clients.find(session);
        if (it == clients.end()) return;
        for (auto& c : it->second) {
            if (c->behind) {
                std::string snap = sse("snapshot", snapshot(a));
                if (!spend(*c, snap.size())) continue;
                c->behind = false;
                c->stream->write(std::move(snap));
                continue;
            }
            if (!spend(*c, frame.size())) {
                c->behind = true;
                continue;
            }
            c->stream->write(frame);
        }
    }
};

DeltaHub::DeltaHub(const std::string& nats_url) : impl_(std::make_shared<Impl>()) {
    if (nats_url.empty()) return;
    nats::ConnectOptions o;
    o.url = nats_url;
    o.name = "gateway-deltas";
    o.retry_on_failed_connect = true;
    auto nc = nats::Connection::connect(o);
    if (!nc) {
        log::get("webchat")->warn("live answers are off: NATS at {}: {}", nats_url, nc.error().detail);
        return;
    }
    impl_->nc = std::move(*nc);
    Impl* im = impl_.get();
    auto sub =
        impl_->nc->subscribe("engram.deltas.>", "", [im](const nats::Message& m, nats::Replier&) { im->on_message(m.data); });
    if (!sub) {
        log::get("webchat")->warn("live answers are off: subscribing on NATS: {}", sub.error().detail);
        return;
    }
    impl_->sub = std::move(*sub);
}

DeltaHub::~DeltaHub() {
    impl_->sub.reset();  // waits for a message being handled
    impl_->nc.reset();
}

void DeltaHub::on_message(const std::string& data) { impl_->on_message(data); }

void DeltaHub::open(const std::shared_ptr<http::Responder>& res, const std::string& session, http::Headers extra,
                    std::function<void()> on_done) {
    extra.emplace_back("Cache-Control", "no-store");
    extra.emplace_back("X-Accel-Buffering", "no");
    auto stream = res->start_stream(200, "text/event-stream; charset=utf-8", std::move(extra));
    auto client = std::make_shared<Impl::Client>();
    client->stream = stream;
    {
        std::lock_guard lk(impl_->mu);
        // Opens the stream at once for the browser (EventSource is "open" on the first bytes).
        stream->write(": live answers\n\n");
        auto a = impl_->answers.find(session);
        if (a != impl_->answers.end() && !a->second.ended && Clock::now() - a->second.touched < kStale)
            stream->write(sse("snapshot", Impl::snapshot(a->second)));
        impl_->clients[session].push_back(client);
        ++impl_->client_count;
    }
    std::weak_ptr<Impl> weak = impl_;
    stream->on_close([weak, session, client, on_done = std::move(on_done)] {
        if (auto im = weak.lock()) {
            std::lock_guard lk(im->mu);
            auto it = im->clients.find(session);
            if (it != im->clients.end()) {
                it->second.remove(client);
                if (it->second.empty()) im->clients.erase(it);
            }
            --im->client_count;
        }
        if (on_done) on_done();
    });
}

std::size_t DeltaHub::clients() const {
    std::lock_guard lk(impl_->mu);
    return impl_->client_count;
}

}  // namespace engram::gateway
