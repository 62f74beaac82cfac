#include "deltas.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "engram/log/log.h"

namespace engram::ai {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string delta_subject(const std::string& session) {
    std::string s = "engram.deltas.";
    for (char c : session) {
        bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
        s.push_back(safe ? c : '_');
    }
    return s;
}

namespace {

// Where a cut of at most n bytes ends without splitting a UTF-8 sequence.
std::size_t utf8_cut(const std::string& s, std::size_t n) {
    if (n >= s.size()) return s.size();
    std::size_t end = n;
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
    return end;
}

}  // namespace

struct DeltaCall::Impl {
    PublishFn publish;
    DeltaOptions o;
    std::string subject, session, run_id;
    int iteration = 0;

    std::mutex mu;
    std::condition_variable cv;
    bool ended = false, restart = false, truncated = false, truncated_sent = false;
    std::string content;
    struct Call {
        std::string id, name, arguments;
    };
    std::map<int, Call> calls;
    std::size_t preview = 0;  // text bytes taken in this call (since the last restart)
    std::int64_t seq = 0;
    std::thread flusher;

    void add(const llm::Delta& d) {
        std::lock_guard lk(mu);
        if (ended) return;
        if (d.kind == llm::Delta::Kind::restart) {
            content.clear();
            calls.clear();
            preview = 0;
            truncated = truncated_sent = false;
            restart = true;
            return;
        }
        if (truncated) return;
        std::size_t bytes = d.text.size() + d.id.size() + d.name.size();
        if (preview + bytes > o.max_preview) {
            truncated = true;
            return;
        }
        preview += bytes;
        if (d.kind == llm::Delta::Kind::content) {
            content += d.text;
        } else {
            auto& c = calls[d.index];
            if (!d.id.empty()) c.id = d.id;
            if (!d.name.empty()) c.name = d.name;
            c.arguments += d.text;
        }
    }

    // Takes at most max_message bytes of what is pending into one message; "" when nothing is.
    std::string take(bool end) {
        std::size_t budget = o.max_message;
        json m = {{"session_id", session}, {"run_id", run_id}, {"iteration", iteration}};
        bool any = false;
        if (restart) {
            m["restart"] = true;
            restart = false;
            any = true;
        }
        if (!content.empty()) {
            std::size_t cut = utf8_cut(content, budget);
            m["content"] = content.substr(0, cut);
            content.erase(0, cut);
            budget -= cut;
            any = any || cut > 0;
        }
        json tcs = json::array();
        for (auto it = calls.begin(); it != calls.end();) {
            auto& c = it->second;
            json t = {{"index", it->first}};
            if (!c.id.empty()) t["id"] = std::exchange(c.id, {});
            if (!c.name.empty()) t["name"] = std::exchange(c.name, {});
            std::size_t cut = utf8_cut(c.arguments, budget);
            if (cut > 0) t["arguments"] = c.arguments.substr(0, cut);
            c.arguments.erase(0, cut);
            budget -= cut;
            if (t.size() > 1) tcs.push_back(std::move(t));
            it = c.arguments.empty() ? calls.erase(it) : std::next(it);
            if (budget == 0) break;
        }
        if (!tcs.empty()) {
            m["tool_calls"] = std::move(tcs);
            any = true;
        }
        // At the end, what did not fit is dropped rather than sent in a burst: the log has the answer.
        if (end && (!content.empty() || !calls.empty())) truncated = true;
        if (truncated && !truncated_sent && (end || (content.empty() && calls.empty()))) {
            m["truncated"] = true;
            truncated_sent = any = true;
        }
        if (end) {
            m["end"] = true;
            any = true;
        }
        if (!any) return "";
        m["seq"] = ++seq;
        return m.dump(-1, ' ', false, json::error_handler_t::replace);
    }

    bool pending() const { return restart || !content.empty() || !calls.empty() || (truncated && !truncated_sent); }

    void send(const std::string& msg) {
        if (msg.empty()) return;
        try {
            publish(subject, msg);
        } catch (const std::exception& e) {
            log::get("ai-processor")->debug("delta not published: {}", e.what());
        }
    }

    void loop() {
        std::unique_lock lk(mu);
        while (!ended) {
            cv.wait_for(lk, o.interval, [&] { return ended; });
            if (ended) break;
            if (!pending()) continue;
            std::string msg = take(false);
            lk.unlock();
            send(msg);  // outside the lock: the model's reader never waits for the bus
            lk.lock();
        }
    }

    void finish() {
        {
            std::lock_guard lk(mu);
            if (ended) return;
            ended = true;
        }
        cv.notify_all();
        if (flusher.joinable()) flusher.join();
        std::string msg;
        {
            std::lock_guard lk(mu);
            msg = take(true);
        }
        send(msg);
    }
};

DeltaCall::DeltaCall(PublishFn publish, DeltaOptions o, std::string session, std::string run_id, int iteration)
    : impl_(std::make_shared<Impl>()) {
    auto& im = *impl_;
    im.publish = std::move(publish);
    im.o = o;
    im.subject = delta_subject(session);
    im.session = std::move(session);
    im.run_id = std::move(run_id);
    im.iteration = iteration;
    im.flusher = std::thread([p = impl_.get()] { p->loop(); });
}

DeltaCall::~DeltaCall() { end(); }

llm::DeltaSink DeltaCall::sink() {
    return [im = impl_](const llm::Delta& d) { im->add(d); };
}

void DeltaCall::end() { impl_->finish(); }

std::unique_ptr<DeltaCall> open_deltas(const PublishFn& publish, const DeltaOptions& o, const std::string& session,
                                       const std::string& run_id, int iteration, llm::Request& req) {
    if (!publish) {
        req.on_delta = nullptr;
        return nullptr;
    }
    auto call = std::make_unique<DeltaCall>(publish, o, session, run_id, iteration);
    req.on_delta = call->sink();
    return call;
}

}  // namespace engram::ai
