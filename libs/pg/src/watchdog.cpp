#include "engram/pg/pg.h"

#include <sys/socket.h>

#include <map>
#include <thread>

namespace engram::pg {

struct Watchdog::State {
    struct Entry {
        int fd;
        std::chrono::steady_clock::time_point deadline;
    };
    std::mutex mu;
    std::condition_variable cv;
    std::map<std::uint64_t, Entry> armed;
    std::map<std::uint64_t, bool> fired;  // ids cut and not yet disarmed
    std::uint64_t next = 1;
    bool stop = false;
    std::thread thread;

    void run() {
        std::unique_lock lk(mu);
        while (!stop) {
            auto now = std::chrono::steady_clock::now();
            auto wake = now + std::chrono::hours(1);
            for (auto it = armed.begin(); it != armed.end();) {
                if (it->second.deadline <= now) {
                    ::shutdown(it->second.fd, SHUT_RDWR);
                    fired[it->first] = true;
                    it = armed.erase(it);
                } else {
                    wake = std::min(wake, it->second.deadline);
                    ++it;
                }
            }
            cv.wait_until(lk, wake);
        }
    }
};

Watchdog::Watchdog() : s_(std::make_unique<State>()) {
    s_->thread = std::thread([s = s_.get()] { s->run(); });
}

Watchdog::~Watchdog() {
    {
        std::lock_guard lk(s_->mu);
        s_->stop = true;
    }
    s_->cv.notify_all();
    s_->thread.join();
}

Watchdog::Guard Watchdog::arm(pqxx::connection& c, std::chrono::milliseconds timeout) {
    if (timeout.count() <= 0 || !c.is_open()) return Guard();
    int fd = c.sock();
    if (fd < 0) return Guard();
    std::uint64_t id;
    {
        std::lock_guard lk(s_->mu);
        id = s_->next++;
        s_->armed[id] = State::Entry{fd, std::chrono::steady_clock::now() + timeout};
    }
    s_->cv.notify_all();
    return Guard(this, id);
}

Watchdog::Guard::~Guard() {
    if (!w_) return;
    std::lock_guard lk(w_->s_->mu);
    w_->s_->armed.erase(id_);
    w_->s_->fired.erase(id_);
}

bool Watchdog::Guard::fired() const {
    if (!w_) return false;
    std::lock_guard lk(w_->s_->mu);
    return w_->s_->fired.count(id_) > 0;
}

}  // namespace engram::pg
