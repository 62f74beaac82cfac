#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>

#include "engram/testing/testing.h"

using namespace engram::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

bool port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    close(fd);
    return ok;
}

// A pid that no longer runs (gone, or a zombie nobody reaped yet).
bool pid_gone(int pid) {
    if (kill(pid, 0) != 0) return true;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string pid_s, comm, state;
    stat >> pid_s >> comm >> state;
    return state == "Z" || state == "X";
}

bool can_connect(const std::string& url) {
    try {
        pqxx::connection c(url);
        return c.is_open();
    } catch (const std::exception&) {
        return false;
    }
}

// Runs `body` in a forked child that exits with _exit (no destructors, no atexit), as a crashed
// test would; returns the line the child wrote to the pipe.
std::string in_crashing_child(const std::function<std::string()>& body) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        std::string line;
        try {
            line = body();
        } catch (const std::exception& e) {
            line = std::string("error ") + e.what();
        }
        line += "\n";
        ssize_t ignored = write(fds[1], line.data(), line.size());
        (void)ignored;
        _exit(0);
    }
    close(fds[1]);
    std::string got;
    char buf[512];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!got.empty() && got.back() == '\n') got.pop_back();
    return got;
}

}  // namespace

TEST_CASE("free_port returns a bindable loopback port and eventually polls", "[integration][testing]") {
    int p = free_port();
    CHECK(p > 0);
    CHECK(p < 65536);
    CHECK_FALSE(port_open(p));
    int calls = 0;
    CHECK(eventually([&] { return ++calls >= 3; }, 2s));
    CHECK_FALSE(eventually([] { return false; }, 50ms));
    CHECK(fs::exists(build_dir()));
}

TEST_CASE("Postgres: create_database, stop, start keeps data and port", "[integration][testing]") {
    auto& pg = Postgres::shared();
    CHECK(&pg == &Postgres::shared());
    int port = pg.port();
    CHECK(pg.url() == "postgresql://postgres@127.0.0.1:" + std::to_string(port) + "/postgres");

    std::string a = pg.create_database();
    std::string b = pg.create_database();
    CHECK(a != b);
    {
        pqxx::connection c(a);
        pqxx::work tx(c);
        tx.exec("CREATE TABLE t (id int PRIMARY KEY, v text)");
        tx.exec("INSERT INTO t VALUES (1, 'één')");
        tx.commit();
        pqxx::work tx2(c);
        CHECK(tx2.exec1("SHOW server_encoding")[0].as<std::string>() == "UTF8");
        CHECK(tx2.exec1("SHOW max_connections")[0].as<int>() == 200);
        CHECK(tx2.exec1("SHOW fsync")[0].as<std::string>() == "off");
    }
    {
        pqxx::connection c(b);
        pqxx::work tx(c);
        CHECK(tx.exec1("SELECT count(*) FROM pg_tables WHERE tablename = 't'")[0].as<int>() == 0);
    }

    pg.stop();
    CHECK_FALSE(pg.running());
    CHECK_FALSE(can_connect(a));
    pg.start();
    CHECK(pg.port() == port);
    pqxx::connection c(a);
    pqxx::work tx(c);
    CHECK(tx.exec1("SELECT v FROM t WHERE id = 1")[0].as<std::string>() == "één");
}

TEST_CASE("Postgres: a crash (immediate stop) keeps committed rows", "[integration][testing]") {
    Postgres pg(PostgresOptions{true, {"log_min_messages=warning", "max_connections=250"}});
    std::string url = pg.create_database();
    {
        pqxx::connection c(url);
        pqxx::work tx(c);
        tx.exec("CREATE TABLE t (id int)");
        tx.exec("INSERT INTO t SELECT generate_series(1, 1000)");
        tx.commit();
        pqxx::work tx2(c);
        CHECK(tx2.exec1("SHOW fsync")[0].as<std::string>() == "on");
        CHECK(tx2.exec1("SHOW max_connections")[0].as<int>() == 250);  // caller's settings win
    }
    pg.stop(StopMode::immediate);
    pg.start();
    pqxx::connection c(url);
    pqxx::work tx(c);
    CHECK(tx.exec1("SELECT count(*) FROM t")[0].as<int>() == 1000);
}

TEST_CASE("Postgres: a test process that dies leaves no server or directory behind", "[integration][testing]") {
    std::string line = in_crashing_child([] {
        auto* pg = new Postgres();  // leaked on purpose: the child exits without cleanup
        return std::to_string(pg->port()) + " " + pg->dir();
    });
    REQUIRE(line.rfind("error", 0) != 0);
    auto space = line.find(' ');
    int port = std::stoi(line.substr(0, space));
    std::string dir = line.substr(space + 1);
    INFO(line);
    CHECK(eventually([&] { return !port_open(port) && !fs::exists(dir); }, 20s));
}

TEST_CASE("Nats: start, stop, start on the same port and store", "[integration][testing]") {
    Nats nats;
    int port = nats.port();
    CHECK(nats.url() == "nats://" + nats.token() + "@127.0.0.1:" + std::to_string(port));
    CHECK(nats.url_without_token() == "nats://127.0.0.1:" + std::to_string(port));
    CHECK(port_open(port));
    nats.stop();
    CHECK_FALSE(nats.running());
    CHECK_FALSE(port_open(port));
    nats.start();
    CHECK(nats.running());
    CHECK(nats.port() == port);
    CHECK(port_open(port));
    nats.stop(true);  // crash
    CHECK_FALSE(port_open(port));
    nats.start();
    CHECK(port_open(port));
    CHECK(nats.log().find("Server is ready") != std::string::npos);
    CHECK(&Nats::shared() == &Nats::shared());
    CHECK(Nats::shared().port() != port);
}

TEST_CASE("Nats: a test process that dies leaves no server or directory behind", "[integration][testing]") {
    std::string line = in_crashing_child([] {
        auto* n = new Nats();  // leaked on purpose
        return std::to_string(n->port()) + " " + n->dir();
    });
    REQUIRE(line.rfind("error", 0) != 0);
    auto space = line.find(' ');
    int port = std::stoi(line.substr(0, space));
    std::string dir = line.substr(space + 1);
    INFO(line);
    CHECK(eventually([&] { return !port_open(port) && !fs::exists(dir); }, 20s));
}

TEST_CASE("Process: environment, log, exit code, kill9, terminate", "[integration][testing]") {
    std::string dir = make_temp_dir("engram-proc-test");
    {
        Process p({"sh", "-c", "echo \"hello $ENGRAM_TEST_VALUE\"; echo oops >&2; exit 3"}, {{"ENGRAM_TEST_VALUE", "world"}},
                  dir + "/a.log");
        CHECK(p.wait() == 3);
        CHECK_FALSE(p.alive());
        CHECK(p.log().find("hello world") != std::string::npos);
        CHECK(p.log().find("oops") != std::string::npos);
    }
    {
        Process p({"sleep", "60"}, {}, dir + "/b.log");
        CHECK(p.pid() > 0);
        CHECK(p.alive());
        CHECK(p.kill9() == 128 + SIGKILL);
        CHECK_FALSE(p.alive());
        CHECK(pid_gone(p.pid()));
    }
    {
        Process p({"sh", "-c", "trap '' TERM; echo ready; sleep 30"}, {}, dir + "/c.log");
        REQUIRE(eventually([&] { return p.log().find("ready") != std::string::npos; }, 5s));
        auto t0 = std::chrono::steady_clock::now();
        CHECK(p.terminate_and_wait(300ms) == 128 + SIGKILL);
        CHECK(std::chrono::steady_clock::now() - t0 < 5s);
    }
    {
        Process p({"sleep", "60"}, {}, dir + "/d.log");
        CHECK(p.terminate_and_wait() == 128 + SIGTERM);
    }
    {
        Process p({"/nonexistent/binary"}, {}, dir + "/e.log");
        CHECK(p.wait() == 127);
    }
    int pid;
    {
        Process p({"sleep", "60"}, {}, dir + "/f.log");
        pid = p.pid();
    }  // destructor terminates
    CHECK(pid_gone(pid));
    fs::remove_all(dir);
}

TEST_CASE("Process: a child outlives no crashed test process", "[integration][testing]") {
    std::string line = in_crashing_child([] {
        auto* p = new Process({"sleep", "120"}, {}, "/dev/null");
        return std::to_string(p->pid());
    });
    REQUIRE(line.rfind("error", 0) != 0);
    int pid = std::stoi(line);
    CHECK(eventually([&] { return pid_gone(pid); }, 10s));
}
