#include "engram/pg/pg.h"

namespace engram::pg {

bool is_connection_error(const std::exception& e) {
    if (dynamic_cast<const pqxx::broken_connection*>(&e)) return true;
    if (dynamic_cast<const pqxx::in_doubt_error*>(&e)) return true;
    if (auto* s = dynamic_cast<const pqxx::sql_error*>(&e)) {
        const std::string& st = s->sqlstate();
        // 08xxx connection exceptions, 57P01..03 admin/crash shutdown, cannot connect now.
        if (st.rfind("08", 0) == 0 || st == "57P01" || st == "57P02" || st == "57P03") return true;
        // libpq reports a dead server as a plain error without a SQLSTATE.
        if (st.empty()) {
            std::string w = e.what();
            return w.find("server closed the connection") != std::string::npos ||
                   w.find("terminating connection") != std::string::npos ||
                   w.find("no connection to the server") != std::string::npos ||
                   w.find("connection to server") != std::string::npos;
        }
    }
    return false;
}

Error unavailable(const std::exception& e) {
    std::string w = e.what();
    while (!w.empty() && (w.back() == '\n' || w.back() == ' ')) w.pop_back();
    for (auto& c : w)
        if (c == '\n') c = ' ';
    return Error::make("unavailable", "the database is unavailable: " + w);
}

Result<std::unique_ptr<pqxx::connection>> connect(const std::string& url) {
    try {
        // A database that accepts TCP but never answers must not hang a caller forever.
        // A machine that died without closing its connections is noticed by TCP keepalives (idle)
        // and tcp_user_timeout (data sent and never acknowledged) instead of the kernel's ~15 min.
        std::string u = url;
        bool uri = u.find("://") != std::string::npos;
        auto add = [&](const char* key, const char* value) {
            if (u.find(key) != std::string::npos) return;
            u += (uri ? (u.find('?') == std::string::npos ? "?" : "&") : " ") + std::string(key) + "=" + value;
        };
        add("connect_timeout", "5");
        add("keepalives_idle", "10");
        add("keepalives_interval", "3");
        add("keepalives_count", "3");
        add("tcp_user_timeout", "20000");
        return std::make_unique<pqxx::connection>(u);
    } catch (const std::exception& e) {
        return unavailable(e);
    }
}

std::string record_setting(pqxx::connection& c, const std::string& key, const std::string& value) {
    pqxx::work tx(c);
    tx.exec("SELECT pg_advisory_xact_lock(hashtext('engram.settings'))");
    tx.exec("CREATE TABLE IF NOT EXISTS engram_settings (key text PRIMARY KEY, value text NOT NULL)");
    tx.exec_params("INSERT INTO engram_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, value);
    auto recorded = tx.exec_params("SELECT value FROM engram_settings WHERE key = $1", key)[0][0].as<std::string>();
    tx.commit();
    return recorded;
}

Pool::Pool(std::string url, std::size_t max_size) : url_(std::move(url)), max_(max_size) {}
Pool::~Pool() = default;

Pool::Lease::~Lease() {
    if (pool_ && c_) pool_->give_back(std::move(c_), broken_ || !c_->is_open());
}

Result<Pool::Lease> Pool::acquire() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !idle_.empty() || leased_ < max_; });
    if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        ++leased_;
        return Lease(this, std::move(c));
    }
    ++leased_;
    lk.unlock();
    auto c = connect(url_);
    if (!c) {
        std::lock_guard g(mu_);
        --leased_;
        cv_.notify_one();
        return std::move(c).error();
    }
    return Lease(this, std::move(*c));
}

void Pool::give_back(std::unique_ptr<pqxx::connection> c, bool broken) {
    std::lock_guard lk(mu_);
    --leased_;
    if (!broken) idle_.push_back(std::move(c));
    cv_.notify_one();
}

}  // namespace engram::pg
