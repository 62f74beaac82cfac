#include "engram/testing/postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cctype>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <pqxx/pqxx>
#include <stdexcept>

#include "engram/testing/util.h"
#include "internal.h"

namespace fs = std::filesystem;

namespace engram::testing {

namespace {

bool has_pg_tools(const std::string& dir) {
    return access((dir + "/initdb").c_str(), X_OK) == 0 && access((dir + "/pg_ctl").c_str(), X_OK) == 0;
}

std::string find_pg_bin() {
    if (const char* env = std::getenv("ENGRAM_PG_BIN"); env && *env) {
        if (!has_pg_tools(env)) throw std::runtime_error(std::string("ENGRAM_PG_BIN=") + env + " holds no initdb/pg_ctl");
        return env;
    }
    std::string best;
    int best_version = -1;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/usr/lib/postgresql", ec)) {
        std::string name = e.path().filename().string();
        char* end = nullptr;
        long v = std::strtol(name.c_str(), &end, 10);
        if (end == name.c_str()) continue;
        std::string bin = e.path().string() + "/bin";
        if (v > best_version && has_pg_tools(bin)) {
            best_version = static_cast<int>(v);
            best = bin;
        }
    }
    if (!best.empty()) return best;
    std::string pg_ctl = which("pg_ctl");
    if (!pg_ctl.empty()) {
        std::string dir = fs::path(pg_ctl).parent_path().string();
        if (has_pg_tools(dir)) return dir;
    }
    throw std::runtime_error("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql or set ENGRAM_PG_BIN");
}

// initdb takes ~0.6 s on tmpfs; copying a finished cluster there takes ~0.05 s. The template is built once per
// (binaries, user) into a temporary directory and renamed into place, so concurrent test
// processes never see a half-built one.
std::string template_cluster(const std::string& bin, const std::string& base) {
    struct stat st {};
    stat((bin + "/postgres").c_str(), &st);
    std::size_t key = std::hash<std::string>{}(bin + "|" + std::to_string(st.st_mtime));
    char name[128];
    std::snprintf(name, sizeof name, "/engram-pgtemplate-%u-%zx", static_cast<unsigned>(geteuid()), key);
    std::string tpl = base + name;
    if (access((tpl + "/data/PG_VERSION").c_str(), F_OK) == 0) return tpl;

    std::string build = make_temp_dir("engram-pgtemplate-build", base);
    chown_to_postgres(build);
    std::string log = build + "/initdb.log";
    int rc = run_command(as_postgres({bin + "/initdb", "-D", build + "/data", "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                      "--locale=C", "--no-sync", "--no-instructions"}),
                         build, log);
    if (rc != 0) {
        std::string out = tail_file(log);
        std::error_code ec;
        fs::remove_all(build, ec);
        throw std::runtime_error("initdb failed (exit " + std::to_string(rc) + "): " + out);
    }
    if (rename(build.c_str(), tpl.c_str()) != 0) {
        // Another process finished first (EEXIST/ENOTEMPTY): use theirs.
        std::error_code ec;
        fs::remove_all(build, ec);
        if (access((tpl + "/data/PG_VERSION").c_str(), F_OK) != 0)
            throw std::runtime_error("could not install the PostgreSQL template cluster at " + tpl + ": " + std::strerror(errno));
    }
    return tpl;
}

}  // namespace

Postgres::Postgres(PostgresOptions options) : Postgres(std::move(options), nullptr) {}

Postgres::Postgres(PostgresOptions options, const Postgres* primary) : options_(std::move(options)) {
    bin_ = find_pg_bin();
    std::string base = options_.base_dir.empty() ? temp_base() : options_.base_dir;
    std::string tpl = primary ? std::string() : template_cluster(bin_, base);
    dir_ = make_temp_dir("engram-pg", base);
    data_ = dir_ + "/data";
    try {
        chown_to_postgres(dir_);
        std::string stop_cmd = "cd /;";
        for (const auto& a : as_postgres({bin_ + "/pg_ctl", "-D", data_, "-m", "immediate", "-w", "stop"}))
            stop_cmd += " " + shell_quote(a);
        watchdog_ = std::make_unique<Watchdog>(stop_cmd + " >/dev/null 2>&1; rm -rf " + shell_quote(dir_));
        if (primary) {
            int rc = run_command(as_postgres({bin_ + "/pg_basebackup", "-h", "127.0.0.1", "-p", std::to_string(primary->port()),
                                              "-U", "postgres", "-D", data_, "-R", "-X", "stream", "-c", "fast", "--no-sync"}),
                                 dir_, dir_ + "/setup.log");
            if (rc != 0) throw std::runtime_error("pg_basebackup failed: " + tail_file(dir_ + "/setup.log"));
        } else {
            int rc = run_command({"cp", "-a", tpl + "/data", data_}, dir_, dir_ + "/setup.log");
            if (rc != 0) throw std::runtime_error("copying the template cluster failed: " + tail_file(dir_ + "/setup.log"));
        }
        // The settings go into postgresql.conf as well as on the command line: tools that start the
        // server themselves (pg_rewind's crash recovery) must see them too.
        if (!options_.settings.empty()) {
            std::ofstream conf(data_ + "/postgresql.conf", std::ios::app);
            for (const auto& setting : options_.settings) {
                auto eq = setting.find('=');
                std::string value = eq == std::string::npos ? "" : setting.substr(eq + 1);
                std::string quoted;
                for (char ch : value) quoted += ch == '\'' ? std::string("''") : std::string(1, ch);
                conf << setting.substr(0, eq) << " = '" << quoted << "'\n";
            }
        }
        for (int attempt = 0;; ++attempt) {
            port_ = free_port();
            if (try_start()) break;
            std::string log = tail_file(dir_ + "/pg.log");
            bool port_clash = log.find("could not bind") != std::string::npos || log.find("already in use") != std::string::npos;
            if (!port_clash || attempt >= 4)
                throw std::runtime_error("PostgreSQL did not start on port " + std::to_string(port_) + ": " + log +
                                         tail_file(dir_ + "/pg_ctl.log"));
        }
    } catch (...) {
        try {
            if (running_) stop(StopMode::immediate);
        } catch (...) {}
        std::error_code ec;
        fs::remove_all(dir_, ec);
        if (watchdog_) watchdog_->disarm();
        throw;
    }
}

Postgres::~Postgres() {
    try {
        if (running_) stop(StopMode::immediate);
    } catch (...) {}
    std::error_code ec;
    fs::remove_all(dir_, ec);
    if (watchdog_) watchdog_->disarm();
}

Postgres& Postgres::shared() {
    static Postgres instance;
    return instance;
}

std::unique_ptr<Postgres> Postgres::standby_of(const Postgres& primary, PostgresOptions options) {
    return std::unique_ptr<Postgres>(new Postgres(std::move(options), &primary));
}

void Postgres::kill() {
    if (!running_) return;
    std::ifstream pidfile(data_ + "/postmaster.pid");
    pid_t pm = 0;
    pidfile >> pm;
    if (pm <= 0) throw std::runtime_error("no postmaster.pid in " + data_);
    // The children first are found by their parent pid; all get SIGKILL together so none of them
    // notices the postmaster's death and exits cleanly.
    std::vector<pid_t> victims{pm};
    for (int child : child_pids(pm)) victims.push_back(static_cast<pid_t>(child));
    ::kill(pm, SIGSTOP);  // no new children between the scan and the kill
    for (pid_t v : victims) ::kill(v, SIGKILL);
    for (int i = 0; i < 500 && ::kill(pm, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    running_ = false;
}

void Postgres::promote() {
    int rc =
        run_command(as_postgres({bin_ + "/pg_ctl", "-D", data_, "-w", "-t", "60", "-s", "promote"}), dir_, dir_ + "/pg_ctl.log");
    if (rc != 0) throw std::runtime_error("pg_ctl promote failed: " + tail_file(dir_ + "/pg_ctl.log") + log());
}

void Postgres::rejoin_as_standby_of(const Postgres& primary) {
    if (running_) stop(StopMode::fast);
    std::string source = "host=127.0.0.1 port=" + std::to_string(primary.port()) + " user=postgres dbname=postgres";
    {
        // pg_rewind reads the source's timeline from its control file, which a fresh promotion only
        // updates at its next checkpoint: without one it finds "no rewind required" and the old
        // primary, with WAL the new one never had, cannot follow.
        pqxx::connection c(source);
        pqxx::nontransaction tx(c);
        tx.exec("CHECKPOINT");
    }
    int rc = run_command(
        as_postgres({bin_ + "/pg_rewind", "--target-pgdata=" + data_, "--source-server=" + source, "-R", "--no-sync"}), dir_,
        dir_ + "/rewind.log");
    if (rc != 0) throw std::runtime_error("pg_rewind failed: " + tail_file(dir_ + "/rewind.log"));
    start();
}

bool Postgres::has_sync_standby() const {
    try {
        pqxx::connection c(url());
        pqxx::nontransaction tx(c);
        return tx.exec("SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'").size() == 1;
    } catch (const std::exception&) {
        return false;
    }
}

std::string Postgres::multi_host_url(const std::vector<const Postgres*>& clusters, const std::string& db) {
    std::string hosts;
    for (const auto* c : clusters) hosts += (hosts.empty() ? "" : ",") + std::string("127.0.0.1:") + std::to_string(c->port());
    return "postgresql://postgres@" + hosts + "/" + db + "?target_session_attrs=read-write";
}

std::string Postgres::url(const std::string& db) const {
    return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/" + db;
}

std::string Postgres::create_database() {
    std::string name = "test_" + std::to_string(getpid()) + "_" + std::to_string(++db_counter_);
    pqxx::connection c(url());
    pqxx::nontransaction tx(c);
    tx.exec("CREATE DATABASE " + tx.quote_name(name));
    return url(name);
}

bool Postgres::try_start() {
    std::string opts =
        "-p " + std::to_string(port_) + " -k " + shell_quote(dir_) + " -c listen_addresses=127.0.0.1 -c max_connections=200";
    if (!options_.fsync) opts += " -c fsync=off -c full_page_writes=off";
    for (const auto& s : options_.settings) opts += " -c " + shell_quote(s);
    int rc = run_command(
        as_postgres({bin_ + "/pg_ctl", "-D", data_, "-l", dir_ + "/pg.log", "-w", "-t", "60", "-s", "-o", opts, "start"}), dir_,
        dir_ + "/pg_ctl.log");
    running_ = rc == 0;
    return running_;
}

void Postgres::start() {
    if (running_) return;
    if (!try_start())
        throw std::runtime_error("PostgreSQL did not restart on port " + std::to_string(port_) + ": " +
                                 tail_file(dir_ + "/pg.log") + tail_file(dir_ + "/pg_ctl.log"));
}

void Postgres::stop(StopMode mode) {
    if (!running_) return;
    int rc = run_command(as_postgres({bin_ + "/pg_ctl", "-D", data_, "-m", mode == StopMode::fast ? "fast" : "immediate", "-w",
                                      "-t", "60", "-s", "stop"}),
                         dir_, dir_ + "/pg_ctl.log");
    running_ = false;
    if (rc != 0) throw std::runtime_error("pg_ctl stop failed: " + tail_file(dir_ + "/pg_ctl.log"));
}

std::string Postgres::log() const { return tail_file(dir_ + "/pg.log", 16000); }

}  // namespace engram::testing
