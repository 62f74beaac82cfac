// What a stranger can make the client buffer (ClientOptions::response_limit), what is redacted, and
// (below) the caps of the server: connections, idle keep-alive, the handler queue.
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <sstream>
#include <thread>

#include "engram/http/client.h"
#include "engram/http/server.h"
#include "engram/http/url.h"
#include "raw_conn.h"

using namespace engram;
using namespace engram::http;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using engram::http::test::eventually;
using engram::http::test::RawConn;

namespace {

// Answers by path: /size?n=N (N bytes, Content-Length), /chunked?n=N&k=K (N bytes in chunks of K),
// /line?n=N (an event stream whose one line has N bytes), /echo, /missing (404).
std::unique_ptr<Server> sized_server(ServerOptions opts = {}) {
    auto server = std::make_unique<Server>(opts, [](Request& req, std::shared_ptr<Responder> res) {
        auto n = std::stoul(req.param("n").value_or("0"));
        if (req.path == "/size") return res->respond(Response::text(200, std::string(n, 's')));
        if (req.path == "/chunked" || req.path == "/line") {
            auto k = std::stoul(req.param("k").value_or("65536"));
            auto s = res->start_stream(200, req.path == "/line" ? "text/event-stream" : "application/octet-stream");
            if (req.path == "/line") s->write("id: 1\ndata: first\n\ndata: ");
            for (std::size_t sent = 0; sent < n; sent += k) s->write(std::string(std::min(k, n - sent), 'c'));
            if (req.path == "/line") s->write("\n\n");
            s->close();
            return;
        }
        if (req.path == "/echo") return res->respond(Response::json(200, {{"ok", true}}));
        res->respond(Response::error(404, "not_found", "no route for " + req.path));
    });
    server->start();
    return server;
}

std::string base(const Server& s) { return "http://127.0.0.1:" + std::to_string(s.port()); }

}  // namespace

TEST_CASE("a response over ClientOptions::response_limit is its own error, and the client goes on", "[unit][http]") {
    auto server = sized_server();
    ClientOptions o;
    o.response_limit = 1 << 20;
    Client c(base(*server), o);

    auto at = c.get("/size?n=" + std::to_string(1 << 20));  // exactly the limit
    REQUIRE(at.ok());
    CHECK(at->body.size() == (1u << 20));

    for (const char* path : {"/size?n=1048577", "/chunked?n=3000000&k=100000"}) {
        INFO(path);
        auto r = c.get(path);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "response_too_large");
        CHECK(r.error().detail.find("1048576 bytes") != std::string::npos);
        auto after = c.get("/echo");  // a fresh connection: the refused answer was left mid-message
        REQUIRE(after.ok());
        CHECK(after->json()["ok"] == true);
    }
    CHECK(c.connections_opened() == 3);

    // The default is 16 MiB: 5 MiB is fine.
    Client d(base(*server));
    auto big = d.get("/size?n=" + std::to_string(5 << 20));
    REQUIRE(big.ok());
    CHECK(big->body.size() == (5u << 20));
}

TEST_CASE("an event stream line over the limit ends the stream with response_too_large", "[unit][http]") {
    auto server = sized_server();
    ClientOptions o;
    o.response_limit = 64 * 1024;
    Client c(base(*server), o);
    int events = 0;
    auto cb = [&](const std::string&, const std::string&, const std::string&) { return ++events > 0; };
    auto fine = c.sse("/line?n=60000&k=1000", {}, cb, 5000ms);
    REQUIRE(fine.ok());
    CHECK(events == 2);

    events = 0;
    auto r = c.sse("/line?n=2000000&k=10000", {}, cb, 5000ms);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "response_too_large");
    CHECK(r.error().detail.find("65536 bytes") != std::string::npos);
    CHECK(events == 1);  // the event before the endless line was delivered

    // A refused stream (a non-2xx answer with a Content-Length body) returns its status.
    auto missing = c.sse("/missing", {}, cb, 5000ms);
    REQUIRE(missing.ok());
    CHECK(*missing == 404);
    CHECK(c.get("/echo").ok());
}

TEST_CASE("credentials in a target are redacted", "[unit][http]") {
    CHECK(redact_target("/events/stream?aggregate_id=a&access_token=s3cret") ==
          "/events/stream?aggregate_id=a&access_token=<redacted>");
    CHECK(redact_target("/x?Access_Token=a&token=b&api_key=c&key=d&password=e&secret=f&keep=g") ==
          "/x?Access_Token=<redacted>&token=<redacted>&api_key=<redacted>&key=<redacted>&password=<redacted>&secret=<redacted>"
          "&keep=g");
    CHECK(redact_target("/x?access%5Ftoken=s3cret") == "/x?access%5Ftoken=<redacted>");
    CHECK(redact_target("/no/query") == "/no/query");
    CHECK(redact_target("/x?access_token") == "/x?access_token");  // no value, nothing to hide
    CHECK(redact_target("/x?&&a=1&") == "/x?&&a=1&");

    // The client's error details never carry it.
    ClientOptions quick;
    quick.timeout = 300ms;
    auto server = std::make_unique<Server>(ServerOptions{}, [](Request&, std::shared_ptr<Responder> res) {
        std::this_thread::sleep_for(600ms);
        res->respond(Response::json(200, {}));
    });
    server->start();
    Client c(base(*server), quick);
    auto r = c.get("/slow?access_token=s3cret-value");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "timeout");
    CHECK(r.error().detail.find("s3cret-value") == std::string::npos);
    CHECK(r.error().detail.find("access_token=<redacted>") != std::string::npos);
}

namespace {

// A server whose /block handler waits until release(); /hold opens a stream the test drives.
struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    int blocked = 0;
    std::atomic<int> echoes{0};
    std::shared_ptr<Stream> stream;
    std::unique_ptr<Server> server;

    explicit Gate(ServerOptions opts) {
        server = std::make_unique<Server>(opts, [this](Request& req, std::shared_ptr<Responder> res) {
            if (req.path == "/block") {
                std::unique_lock lk(mu);
                ++blocked;
                cv.notify_all();
                cv.wait(lk, [&] { return open; });
                return res->respond(Response::json(200, {{"unblocked", true}}));
            }
            if (req.path == "/hold") {
                std::lock_guard lk(mu);
                stream = res->start_stream(200, "text/event-stream");
                cv.notify_all();
                return;
            }
            ++echoes;
            res->respond(Response::json(200, {{"echo", req.param("i").value_or("")}}));
        });
        server->start();
    }
    ~Gate() {
        release();
        server->stop();
    }
    void release() {
        std::lock_guard lk(mu);
        open = true;
        cv.notify_all();
    }
    bool wait_blocked(int n) {
        std::unique_lock lk(mu);
        return cv.wait_for(lk, 5s, [&] { return blocked >= n; });
    }
    std::shared_ptr<Stream> wait_stream() {
        std::unique_lock lk(mu);
        cv.wait_for(lk, 5s, [&] { return stream != nullptr; });
        return stream;
    }
    std::string base() const { return "http://127.0.0.1:" + std::to_string(server->port()); }
};

const std::string kGet = "GET /echo?i=raw HTTP/1.1\r\nHost: x\r\n\r\n";

}  // namespace

TEST_CASE("connections over max_connections get a short 503 and are closed; the server serves on", "[unit][http]") {
    ServerOptions o;
    o.max_connections = 3;
    Gate g(o);
    std::vector<std::unique_ptr<RawConn>> idle;
    for (int i = 0; i < 3; ++i) idle.push_back(std::make_unique<RawConn>(g.server->port()));
    REQUIRE(eventually([&] { return g.server->open_connections() == 3; }));

    RawConn over(g.server->port());
    over.send(kGet);
    REQUIRE(over.read_to_eof());
    const auto& reply = over.data();
    CHECK(reply.rfind("HTTP/1.1 503", 0) == 0);
    CHECK(reply.find("Retry-After: 1\r\n") != std::string::npos);
    CHECK(reply.find("Connection: close\r\n") != std::string::npos);
    CHECK(reply.find(R"("error":"overloaded")") != std::string::npos);
    CHECK(reply.find("too many open connections (limit 3)") != std::string::npos);

    Client c(g.base());
    auto refused = c.get("/echo");
    REQUIRE(refused.ok());
    CHECK(refused->status == 503);
    CHECK(refused->json()["error"] == "overloaded");
    CHECK(refused->header("retry-after") == "1");
    CHECK(g.echoes == 0);  // no handler ran for a refused connection
    CHECK(g.server->open_connections() == 3);

    idle.pop_back();  // one leaves: a place for the next
    REQUIRE(eventually([&] { return g.server->open_connections() == 2; }));
    auto served = c.get("/echo?i=1");
    REQUIRE(served.ok());
    CHECK(served->status == 200);
    CHECK(served->json()["echo"] == "1");
    CHECK(g.echoes == 1);
}

TEST_CASE("a connection without a request within idle_timeout is closed, an open stream is not", "[unit][http]") {
    ServerOptions o;
    o.idle_timeout = 300ms;
    Gate g(o);

    RawConn silent(g.server->port());  // never sends a byte
    auto t0 = Clock::now();
    CHECK(silent.read_to_eof(5000ms));
    CHECK(Clock::now() - t0 >= 250ms);  // not before the timeout

    RawConn kept(g.server->port());  // one request, then silence
    kept.send(kGet);
    CHECK(kept.read_until("}").find("HTTP/1.1 200") == 0);
    CHECK(kept.read_to_eof(5000ms));

    RawConn slow(g.server->port());  // a header that never ends
    slow.send("GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    CHECK(slow.read_to_eof(5000ms));
    CHECK(slow.data().empty());

    RawConn stream(g.server->port());
    stream.send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    auto s = g.wait_stream();
    REQUIRE(s);
    std::this_thread::sleep_for(1000ms);  // three idle timeouts without a byte either way
    CHECK_FALSE(s->closed());
    CHECK(s->write("data: still here\n\n"));
    CHECK(stream.read_until("still here").find("still here") != std::string::npos);
    CHECK(g.server->open_streams() == 1);
    s->close();
    CHECK(stream.read_to_eof());

    Client c(g.base());
    auto r = c.get("/echo");
    REQUIRE(r.ok());
    CHECK(r->status == 200);
}

TEST_CASE("a full handler queue answers 503 overloaded with Retry-After, never queues without bound", "[unit][http]") {
    ServerOptions o;
    o.worker_threads = 1;
    o.max_queued = 2;
    Gate g(o);
    RawConn a(g.server->port()), b(g.server->port()), c(g.server->port()), d(g.server->port());
    a.send("GET /block HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(g.wait_blocked(1));  // the only worker is busy
    b.send(kGet);
    c.send(kGet);
    REQUIRE(eventually([&] { return g.server->queued_requests() == 2; }));

    d.send(kGet);
    auto refused = d.read_until("}");
    CHECK(refused.rfind("HTTP/1.1 503", 0) == 0);
    CHECK(refused.find("Retry-After: 1\r\n") != std::string::npos);
    CHECK(refused.find(R"("error":"overloaded")") != std::string::npos);
    CHECK(refused.find("request queue is full (2 waiting)") != std::string::npos);
    CHECK(g.server->queued_requests() == 2);

    g.release();
    CHECK(a.read_until("}").find(R"({"unblocked":true})") != std::string::npos);
    CHECK(b.read_until("}").find(R"({"echo":"raw"})") != std::string::npos);
    CHECK(c.read_until("}").find(R"({"echo":"raw"})") != std::string::npos);
    // The refused connection was kept alive and is served now.
    d.send("GET /echo?i=again HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(d.read_until("}", 2).find(R"({"echo":"again"})") != std::string::npos);
    CHECK(g.echoes == 3);
    CHECK(g.server->queued_requests() == 0);
}

TEST_CASE("a logged request target never carries an access_token", "[unit][http]") {
    std::ostringstream captured;
    auto previous = spdlog::default_logger();
    spdlog::set_default_logger(
        std::make_shared<spdlog::logger>("capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(captured)));
    {
        Server server({}, [](Request&, std::shared_ptr<Responder>) -> void { throw std::runtime_error("boom"); });
        server.start();
        Client c("http://127.0.0.1:" + std::to_string(server.port()));
        auto r = c.get("/events/stream?aggregate_id=a&access_token=s3cret-value");
        REQUIRE(r.ok());
        CHECK(r->status == 500);
        server.stop();
    }
    spdlog::set_default_logger(previous);
    auto log = captured.str();
    INFO(log);
    CHECK(log.find("/events/stream?aggregate_id=a&access_token=<redacted>") != std::string::npos);
    CHECK(log.find("s3cret-value") == std::string::npos);
}
