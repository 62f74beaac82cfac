#include "trigger_wait.h"

#include <spdlog/spdlog.h>

#include <condition_variable>
#include <list>
#include <mutex>
#include <thread>

#include "engram/http/client.h"
#include "engram/http/url.h"
#include "engram/metrics/metrics.h"

namespace engram::gateway {

namespace {
std::string str_of(const nlohmann::json& o, const char* k) {
    auto it = o.find(k);
    return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
}
}  // namespace

void fold_run_event(RunOutcome& run, const std::string& trigger_id, const nlohmann::json& event) {
    if (!event.is_object() || run.finished()) return;
    const auto type = str_of(event, "type");
    auto dit = event.find("data");
    if (dit == event.end() || !dit->is_object()) return;
    const auto& d = *dit;
    const auto run_id = str_of(d, "run_id");
    // Events of another run of the session (an earlier or a later trigger) are not ours.
    auto ours = [&] {
        if (!run.run_id.empty() && !run_id.empty()) return run_id == run.run_id;
        return str_of(d, "trigger_event_id") == trigger_id;
    };
    if (type == "AIProcessingStarted") {
        if (str_of(d, "trigger_event_id") != trigger_id) return;
        run.run_id = run_id;
        run.state = "running";
    } else if (type == "MessageGenerated") {
        if (run.run_id.empty() || run_id != run.run_id) return;
        run.messages.push_back({{"text", str_of(d, "text")},
                                {"event_id", str_of(event, "id")},
                                {"position", event.value("position", nlohmann::json(0))}});
    } else if (type == "AIProcessingCompleted" || type == "AIProcessingFailed") {
        if (!ours()) return;
        if (run.run_id.empty()) run.run_id = run_id;
        bool done = type == "AIProcessingCompleted";
        run.state = done ? "completed" : "failed";
        static constexpr const char* kCompleted[] = {"stop_reason"};
        static constexpr const char* kFailed[] = {"reason", "detail"};
        auto keep = [&](const char* k) {
            if (auto v = str_of(d, k); !v.empty()) run.detail[k] = v;
        };
        if (done)
            for (const char* k : kCompleted) keep(k);
        else
            for (const char* k : kFailed) keep(k);
    }
}

struct TriggerWaits::Impl {
    TriggerWaitOptions opts;
    std::shared_ptr<spdlog::logger> log;
    metrics::Gauge& waiting;
    metrics::Counter& answered;
    metrics::Counter& timed_out;

    struct Waiter {
        std::shared_ptr<http::Responder> res;
        nlohmann::json accepted;
        std::string session, trigger_id;
        std::int64_t after = 0;
        std::chrono::steady_clock::time_point deadline;
        RunOutcome run;
    };
    std::mutex mu;
    std::condition_variable cv;
    std::list<Waiter> waiters;  // guarded by mu; only the thread reads the store for them
    std::size_t reserved = 0;   // slots taken (waiting or about to)
    bool stopping = false;
    std::thread thread;

    Impl(TriggerWaitOptions o, std::shared_ptr<spdlog::logger> l, metrics::Registry& m)
        : opts(std::move(o)),
          log(std::move(l)),
          waiting(m.gauge("engram_gateway_trigger_waiting", "POST /trigger?wait requests waiting for their run")),
          answered(
              m.counter("engram_gateway_trigger_waits_total", "POST /trigger?wait requests answered", "outcome=\"finished\"")),
          timed_out(
              m.counter("engram_gateway_trigger_waits_total", "POST /trigger?wait requests answered", "outcome=\"timed_out\"")) {}

    static void answer(Waiter& w, bool finished) {
        nlohmann::json body = std::move(w.accepted);
        body["run"] = {{"state", w.run.state}};
        if (!w.run.run_id.empty()) body["run"]["run_id"] = w.run.run_id;
        for (auto& [k, v] : w.run.detail.items()) body["run"][k] = v;
        body["messages"] = std::move(w.run.messages);
        w.res->respond(http::Response::json(finished ? 200 : 202, body));
    }

    // New events of the waiter's session after what it has seen; false when the store did not answer.
    bool follow(http::Client& c, Waiter& w) {
        for (int page = 0; page < 10 && !w.run.finished(); ++page) {
            auto r =
                c.get("/events?aggregate_id=" + http::url_encode(w.session) + "&after=" + std::to_string(w.after) + "&limit=1000",
                      opts.store_headers);
            if (!r || r->status != 200) return false;
            auto j = r->json();
            if (!j.is_object() || !j.contains("events") || !j["events"].is_array()) return false;
            const auto& evs = j["events"];
            for (const auto& e : evs) {
                if (auto p = e.find("position"); p != e.end() && p->is_number_integer())
                    w.after = std::max(w.after, p->get<std::int64_t>());
                fold_run_event(w.run, w.trigger_id, e);
            }
            if (evs.size() < 1000) break;
        }
        return true;
    }

    void run() {
        http::Client c(opts.store_url, http::ClientOptions(std::chrono::milliseconds(5000)));
        auto last_warn = std::chrono::steady_clock::now() - std::chrono::hours(1);
        std::unique_lock lk(mu);
        while (!stopping) {
            cv.wait_for(lk, opts.poll, [&] { return stopping; });
            if (stopping) break;
            // Followed outside the lock: new waiters join the list meanwhile (std::list keeps the
            // iterators valid), and only this thread removes.
            auto it = waiters.begin();
            lk.unlock();
            bool store_answers = true;  // after one failure this round, the others only watch their deadline
            while (true) {
                {
                    std::lock_guard g(mu);
                    if (it == waiters.end() || stopping) break;
                }
                auto& w = *it;
                bool reached = store_answers && follow(c, w);
                if (!reached && store_answers && std::chrono::steady_clock::now() - last_warn > std::chrono::seconds(10)) {
                    log->warn(
                        "trigger waits: the event store did not answer; the waiting requests keep waiting until their deadline");
                    last_warn = std::chrono::steady_clock::now();
                }
                store_answers = store_answers && reached;
                bool finished = w.run.finished();
                if (finished || std::chrono::steady_clock::now() >= w.deadline) {
                    answer(w, finished);
                    (finished ? answered : timed_out).inc();
                    std::lock_guard g(mu);
                    it = waiters.erase(it);
                    --reserved;
                } else {
                    std::lock_guard g(mu);
                    ++it;
                }
            }
            lk.lock();
            waiting.set(static_cast<double>(waiters.size()));
        }
        // Stopping: whoever still waits hears what is known now.
        for (auto& w : waiters) {
            answer(w, false);
            timed_out.inc();
        }
        reserved -= waiters.size();
        waiters.clear();
        waiting.set(0);
    }
};

TriggerWaits::TriggerWaits(TriggerWaitOptions o, std::shared_ptr<spdlog::logger> log, metrics::Registry& m)
    : impl_(std::make_unique<Impl>(std::move(o), std::move(log), m)) {
    impl_->thread = std::thread([this] { impl_->run(); });
}

TriggerWaits::~TriggerWaits() { stop(); }

bool TriggerWaits::reserve() {
    std::lock_guard lk(impl_->mu);
    if (impl_->stopping || impl_->reserved >= impl_->opts.max_waits) return false;
    ++impl_->reserved;
    return true;
}

void TriggerWaits::unreserve() {
    std::lock_guard lk(impl_->mu);
    if (impl_->reserved > 0) --impl_->reserved;
}

void TriggerWaits::wait(std::shared_ptr<http::Responder> res, nlohmann::json accepted, std::string session,
                        std::string trigger_id, std::int64_t after_position, std::chrono::steady_clock::time_point deadline) {
    Impl::Waiter w;
    w.res = std::move(res);
    w.accepted = std::move(accepted);
    w.session = std::move(session);
    w.trigger_id = std::move(trigger_id);
    w.after = after_position;
    w.deadline = deadline;
    std::lock_guard lk(impl_->mu);
    if (impl_->stopping) {
        --impl_->reserved;
        Impl::answer(w, false);
        return;
    }
    impl_->waiters.push_back(std::move(w));
    impl_->waiting.set(static_cast<double>(impl_->waiters.size()));
}

void TriggerWaits::stop() {
    if (!impl_) return;
    {
        std::lock_guard lk(impl_->mu);
        impl_->stopping = true;
    }
    impl_->cv.notify_all();
    if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace engram::gateway
