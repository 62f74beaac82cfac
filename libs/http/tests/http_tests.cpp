#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
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

// What a test's streaming handler left behind.
struct StreamSlot {
    std::mutex mu;
    std::condition_variable cv;
    std::shared_ptr<Stream> stream;
    bool closed_fired = false;

    void set(std::shared_ptr<Stream> s) {
        s->on_close([this] {
            std::lock_guard lk(mu);
            closed_fired = true;
            cv.notify_all();
        });
        std::lock_guard lk(mu);
        stream = std::move(s);
        cv.notify_all();
    }
    std::shared_ptr<Stream> wait_stream(std::chrono::milliseconds limit = 5000ms) {
        std::unique_lock lk(mu);
        cv.wait_for(lk, limit, [&] { return stream != nullptr; });
        return stream;
    }
    bool wait_closed(std::chrono::milliseconds limit = 5000ms) {
        std::unique_lock lk(mu);
        return cv.wait_for(lk, limit, [&] { return closed_fired; });
    }
};

std::string sse_event(int id, const std::string& type, const std::string& data) {
    return "id: " + std::to_string(id) + "\nevent: " + type + "\ndata: " + data + "\n\n";
}

// A server with the routes the tests use.
struct Fixture {
    std::atomic<int> calls{0};
    StreamSlot slot;
    std::mutex remotes_mu;
    std::set<std::string> remotes;
    std::vector<std::thread> threads;  // for answers given later from another thread
    std::unique_ptr<Server> server;

    explicit Fixture(ServerOptions opts = {}) {
        opts.host = "127.0.0.1";
        opts.port = 0;
        server =
            std::make_unique<Server>(opts, [this](Request& req, std::shared_ptr<Responder> res) { handle(req, std::move(res)); });
        server->start();
    }
    ~Fixture() {
        server->stop();
        for (auto& t : threads) t.join();
    }
    std::string base() const { return "http://127.0.0.1:" + std::to_string(server->port()); }

    void handle(Request& req, std::shared_ptr<Responder> res) {
        ++calls;
        {
            std::lock_guard lk(remotes_mu);
            remotes.insert(req.remote);
        }
        if (req.path.rfind("/echo", 0) == 0) {
            nlohmann::json headers = nlohmann::json::object();
            for (auto& [k, v] : req.headers) headers[k] = v;
            auto r = Response::json(200, {{"method", req.method},
                                          {"target", req.target},
                                          {"path", req.path},
                                          {"query", req.query},
                                          {"body", req.body},
                                          {"headers", headers},
                                          {"x", req.param("x").value_or("<none>")},
                                          {"remote", req.remote}});
            r.headers.emplace_back("X-Echo", "yes");
            return res->respond(std::move(r));
        }
        if (req.path == "/json") {
            auto body = nlohmann::json::parse(req.body, nullptr, false);
            if (body.is_discarded() || !body.is_object())
                return res->respond(Response::error(400, "invalid_json", "the body is not a JSON object"));
            return res->respond(Response::json(201, {{"got", body}}));
        }
        if (req.path == "/throw") throw std::runtime_error("boom");
        if (req.path == "/noanswer") return;  // the Responder is dropped unanswered
        if (req.path == "/big") return res->respond(Response::text(200, std::string(5 << 20, 'b')));
        if (req.path == "/delay") {
            std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(req.param("ms").value_or("0"))));
            return res->respond(Response::json(200, {{"i", req.param("i").value_or("")}}));
        }
        if (req.path == "/async") {
            std::lock_guard lk(remotes_mu);
            threads.emplace_back([res] {
                std::this_thread::sleep_for(50ms);
                res->respond(Response::json(202, {{"late", true}}));
            });
            return;
        }
        if (req.path == "/events") {
            auto s = res->start_stream(200, "text/event-stream", {{"X-Stream", "1"}});
            s->write(sse_event(1, "First", R"({"n":1})"));
            s->write(": keep-alive comment\n\n");
            s->write("id: 2\nevent: Second\ndata: line one\ndata: line two\n\n");
            s->write("data: no id or type\n\n");
            s->write(sse_event(3, "Third", R"({"n":3})"));
            s->close();
            return;
        }
        if (req.path == "/hold") {  // the test drives the stream
            slot.set(res->start_stream(200, "text/event-stream"));
            return;
        }
        res->respond(Response::error(404, "not_found", "no route for " + req.path));
    }
};

}  // namespace

TEST_CASE("url helpers encode, decode and split queries", "[unit][http]") {
    CHECK(url_encode("a b&c=d/é~") == "a%20b%26c%3Dd%2F%C3%A9~");
    CHECK(url_decode("a%20b%2fc+d") == "a b/c+d");
    CHECK(url_decode("a%20b+d", true) == "a b d");
    CHECK(url_decode("100%") == "100%");
    CHECK(url_decode("%zz%4") == "%zz%4");
    auto q = parse_query("a=1&b=x+y&c&a=2&d=%26%3D&&e=");
    CHECK(q.at("a") == "2");
    CHECK(q.at("b") == "x y");
    CHECK(q.at("c").empty());
    CHECK(q.at("d") == "&=");
    CHECK(q.at("e").empty());
    CHECK(q.size() == 5);
    CHECK(url_decode(url_encode("Message* ü?&=+")) == "Message* ü?&=+");
}

TEST_CASE("GET and POST are answered with decoded path, query and headers", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    auto r = c.get("/echo/a%20b?x=1&y=hello+world&z=%26&x=last", {{"X-Custom", "Value"}});
    REQUIRE(r.ok());
    CHECK(r->status == 200);
    CHECK(r->header("content-type") == "application/json");
    CHECK(r->header("x-echo") == "yes");
    CHECK(r->header("content-length") == std::to_string(r->body.size()));
    auto j = r->json();
    CHECK(j["method"] == "GET");
    CHECK(j["path"] == "/echo/a b");
    CHECK(j["target"] == "/echo/a%20b?x=1&y=hello+world&z=%26&x=last");
    CHECK(j["query"]["y"] == "hello world");
    CHECK(j["query"]["z"] == "&");
    CHECK(j["x"] == "last");
    CHECK(j["headers"]["x-custom"] == "Value");
    CHECK(j["headers"]["host"] == "127.0.0.1:" + std::to_string(f.server->port()));
    CHECK(j["remote"].get<std::string>().rfind("127.0.0.1:", 0) == 0);

    auto p = c.post_json("/echo", {{"hello", "wörld"}});
    REQUIRE(p.ok());
    CHECK(p->status == 200);
    CHECK(p->json()["method"] == "POST");
    CHECK(nlohmann::json::parse(p->json()["body"].get<std::string>()) == nlohmann::json{{"hello", "wörld"}});
    CHECK(p->json()["headers"]["content-type"] == "application/json");

    auto missing = c.get("/nowhere");
    REQUIRE(missing.ok());
    CHECK(missing->status == 404);
    CHECK(missing->json()["error"] == "not_found");

    auto big = c.get("/big");
    REQUIRE(big.ok());
    CHECK(big->body.size() == (5u << 20));
}

TEST_CASE("a keep-alive connection serves many requests", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    for (int i = 0; i < 100; ++i) {
        auto r = c.get("/echo?x=" + std::to_string(i));
        REQUIRE(r.ok());
        REQUIRE(r->json()["x"] == std::to_string(i));
    }
    CHECK(c.connections_opened() == 1);
    std::lock_guard lk(f.remotes_mu);
    CHECK(f.remotes.size() == 1);
}

TEST_CASE("a body over the limit is refused with 413 before the handler runs", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    auto r = c.request("POST", "/json", std::string((1 << 20) + 1, 'x'), {{"Content-Type", "application/json"}});
    REQUIRE(r.ok());
    CHECK(r->status == 413);
    CHECK(r->json()["error"] == "payload_too_large");
    CHECK(r->json()["detail"].is_string());
    CHECK(f.calls == 0);
    // Exactly at the limit is fine, and the client recovers from the closed connection.
    auto ok = c.request("POST", "/echo", std::string(1 << 20, 'x'));
    REQUIRE(ok.ok());
    CHECK(ok->status == 200);
    CHECK(f.calls == 1);
}

TEST_CASE("the handler decides about malformed JSON bodies", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    auto bad = c.request("POST", "/json", "{nope", {{"Content-Type", "application/json"}});
    REQUIRE(bad.ok());
    CHECK(bad->status == 400);
    CHECK(bad->json() == nlohmann::json{{"error", "invalid_json"}, {"detail", "the body is not a JSON object"}});
    auto good = c.post_json("/json", {{"a", 1}});
    REQUIRE(good.ok());
    CHECK(good->status == 201);
    CHECK(good->json()["got"]["a"] == 1);
}

TEST_CASE("a handler that throws or never answers yields 500", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    auto r = c.get("/throw");
    REQUIRE(r.ok());
    CHECK(r->status == 500);
    CHECK(r->json()["error"] == "internal");
    CHECK(r->json()["detail"] == "boom");
    auto n = c.get("/noanswer");
    REQUIRE(n.ok());
    CHECK(n->status == 500);
    CHECK(n->json()["error"] == "internal");
    // The connection is still usable.
    auto e = c.get("/echo");
    REQUIRE(e.ok());
    CHECK(e->status == 200);
    CHECK(c.connections_opened() == 1);
}

TEST_CASE("a response may come later from another thread", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    auto t0 = Clock::now();
    auto r = c.get("/async");
    REQUIRE(r.ok());
    CHECK(r->status == 202);
    CHECK(r->json()["late"] == true);
    CHECK(Clock::now() - t0 >= 45ms);
}

TEST_CASE("malformed requests get 400 bad_request", "[unit][http]") {
    Fixture f;
    RawConn raw(f.server->port());
    raw.send("GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n");
    auto reply = raw.read_until("}");
    CHECK(reply.rfind("HTTP/1.1 400", 0) == 0);
    CHECK(reply.find("\"error\":\"bad_request\"") != std::string::npos);
    CHECK(raw.read_to_eof());
    CHECK(f.calls == 0);

    RawConn garbage(f.server->port());
    garbage.send("\x01\x02 not http at all\r\n\r\n");
    CHECK(garbage.read_until("}").find("bad_request") != std::string::npos);
}

TEST_CASE("a client expecting 100-continue gets the go-ahead", "[unit][http]") {
    Fixture f;
    RawConn raw(f.server->port());
    raw.send("POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n");
    CHECK(raw.read_until("\r\n\r\n").rfind("HTTP/1.1 100 Continue\r\n\r\n", 0) == 0);
    raw.send(R"({"a":1})");
    auto reply = raw.read_until("}}");
    CHECK(reply.find("HTTP/1.1 201") != std::string::npos);
    CHECK(reply.find(R"({"got":{"a":1}})") != std::string::npos);

    RawConn big(f.server->port());
    big.send("POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n\r\n");
    auto refused = big.read_until("}");
    CHECK(refused.rfind("HTTP/1.1 413", 0) == 0);
    CHECK(big.read_to_eof());
    CHECK(f.calls == 1);
}

TEST_CASE("pipelined requests are answered in order - HTTP/1.0 closes", "[unit][http]") {
    Fixture f;
    RawConn raw(f.server->port());
    raw.send(
        "GET /delay?ms=100&i=first HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /delay?ms=0&i=second HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /delay?ms=0&i=third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(raw.read_to_eof());
    const auto& all = raw.data();
    auto a = all.find("first"), b = all.find("second"), c = all.find("third");
    REQUIRE(a != std::string::npos);
    REQUIRE(b != std::string::npos);
    REQUIRE(c != std::string::npos);
    CHECK(a < b);
    CHECK(b < c);

    RawConn old(f.server->port());
    old.send("GET /echo HTTP/1.0\r\n\r\n");
    CHECK(old.read_to_eof());
    CHECK(old.data().rfind("HTTP/1.0 200", 0) == 0);
    CHECK(old.data().find("Content-Length:") != std::string::npos);
}

TEST_CASE("a streamed response is read as server-sent events", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    std::vector<std::tuple<std::string, std::string, std::string>> got;
    auto r = c.sse(
        "/events", {},
        [&](const std::string& id, const std::string& ev, const std::string& data) {
            got.emplace_back(id, ev, data);
            return true;
        },
        2000ms);
    REQUIRE(r.ok());
    CHECK(*r == 200);
    REQUIRE(got.size() == 4);
    CHECK(got[0] == std::make_tuple(std::string("1"), std::string("First"), std::string(R"({"n":1})")));
    CHECK(got[1] == std::make_tuple(std::string("2"), std::string("Second"), std::string("line one\nline two")));
    CHECK(got[2] == std::make_tuple(std::string("2"), std::string("message"), std::string("no id or type")));
    CHECK(got[3] == std::make_tuple(std::string("3"), std::string("Third"), std::string(R"({"n":3})")));

    // Stopping early from the callback.
    int seen = 0;
    auto early = c.sse(
        "/events", {}, [&](auto&, auto&, auto&) { return ++seen < 2; }, 2000ms);
    REQUIRE(early.ok());
    CHECK(seen == 2);

    // The headers a proxy needs to not buffer.
    RawConn raw(f.server->port());
    raw.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(raw.read_to_eof());
    CHECK(raw.data().find("Cache-Control: no-cache") != std::string::npos);
    CHECK(raw.data().find("X-Accel-Buffering: no") != std::string::npos);
    CHECK(raw.data().find("Connection: keep-alive") != std::string::npos);
    CHECK(raw.data().find("Transfer-Encoding: chunked") != std::string::npos);
    CHECK(raw.data().find("X-Stream: 1") != std::string::npos);

    // Plain requests still work on the same client afterwards.
    auto e = c.get("/echo");
    REQUIRE(e.ok());
    CHECK(e->status == 200);
    CHECK(eventually([&] { return f.server->open_streams() == 0; }));  // ends just after the last byte
}

TEST_CASE("sse gives up with a timeout when the stream goes quiet", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    int events = 0;
    std::thread writer([&] {
        if (auto s = f.slot.wait_stream()) s->write(sse_event(7, "Live", "{}"));  // no assertions off the main thread
    });
    auto t0 = Clock::now();
    auto r = c.sse(
        "/hold", {},
        [&](auto& id, auto&, auto&) {
            CHECK(id == "7");
            ++events;
            return true;
        },
        300ms);
    writer.join();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "timeout");
    CHECK(events == 1);
    CHECK(Clock::now() - t0 < 3s);
    CHECK(f.slot.wait_closed());  // the server notices the client left
}

TEST_CASE("a stream's on_close fires when the client disconnects", "[unit][http]") {
    Fixture f;
    auto raw = std::make_unique<RawConn>(f.server->port());
    raw->send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    auto s = f.slot.wait_stream();
    REQUIRE(s);
    CHECK(s->write(sse_event(1, "A", "{}")));
    CHECK(raw->read_until("data: {}").find("event: A") != std::string::npos);
    CHECK(f.server->open_streams() == 1);
    CHECK_FALSE(f.slot.closed_fired);
    raw.reset();  // the client goes away without a word
    CHECK(f.slot.wait_closed());
    CHECK(s->closed());
    CHECK_FALSE(s->write("data: too late\n\n"));
    CHECK(f.server->open_streams() == 0);
    bool again = false;
    s->on_close([&] { again = true; });  // already closed: called at once
    CHECK(again);
}

TEST_CASE("closing a stream ends the response and fires on_close once", "[unit][http]") {
    Fixture f;
    RawConn raw(f.server->port());
    raw.send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    auto s = f.slot.wait_stream();
    REQUIRE(s);
    std::atomic<int> fired{0};
    s->on_close([&] { ++fired; });
    s->write("data: bye\n\n");
    s->close();
    s->close();
    CHECK(raw.read_to_eof());
    CHECK(raw.data().find("data: bye") != std::string::npos);
    CHECK(raw.data().find("\r\n0\r\n\r\n") != std::string::npos);  // the last chunk
    CHECK(eventually([&] { return fired == 1; }));
    CHECK(f.slot.wait_closed());
}

TEST_CASE("a stalled stream client is cut off and never slows the writer", "[unit][http]") {
    ServerOptions opts;
    opts.stream_queue_limit = 256 * 1024;
    Fixture f(opts);
    RawConn raw(f.server->port(), 4096);
    raw.send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");  // and never reads again
    auto s = f.slot.wait_stream();
    REQUIRE(s);
    const std::string chunk = "data: " + std::string(64 * 1024, 'z') + "\n\n";
    auto slowest = Clock::duration::zero();
    std::size_t accepted = 0, max_queued = 0;
    bool cut = false;
    // Paced so that the kernel buffers fill first; bounded so that a broken limit fails, not hangs.
    for (int i = 0; i < 3000 && !cut; ++i) {
        auto t0 = Clock::now();
        bool ok = s->write(chunk);
        slowest = std::max(slowest, Clock::now() - t0);
        max_queued = std::max(max_queued, s->queued_bytes());
        if (ok)
            accepted += chunk.size();
        else
            cut = true;
        std::this_thread::sleep_for(1ms);
    }
    INFO("accepted " << accepted << " bytes, max queued " << max_queued);
    CHECK(cut);
    CHECK(accepted > opts.stream_queue_limit);  // the kernel took some before the queue filled up
    CHECK(max_queued <= opts.stream_queue_limit);
    CHECK(slowest < 100ms);
    CHECK(accepted < (64u << 20));  // the limit plus what the kernel buffers, not everything
    CHECK(s->closed());
    CHECK(f.slot.wait_closed());
    CHECK(eventually([&] { return f.server->open_streams() == 0; }));
    // The server is unharmed.
    ClientOptions quick;
    quick.timeout = 2000ms;
    Client c(f.base(), quick);
    auto r = c.get("/echo");
    REQUIRE(r.ok());
    CHECK(r->status == 200);
}

TEST_CASE("a stream client that keeps up is never cut off", "[unit][http]") {
    ServerOptions opts;
    opts.stream_queue_limit = 256 * 1024;
    Fixture f(opts);
    Client c(f.base());
    std::atomic<int> refused{0};
    const std::string payload(16 * 1024, 'p');
    std::thread writer([&] {
        auto s = f.slot.wait_stream();
        if (!s) return;
        for (int i = 1; i <= 200; ++i) {
            if (!s->write(sse_event(i, "Big", payload))) ++refused;
            std::this_thread::sleep_for(1ms);  // ~16 MB/s: far below what loopback sustains
        }
        s->close();
    });
    int events = 0;
    bool intact = true;
    auto r = c.sse(
        "/hold", {},
        [&](auto& id, auto&, auto& data) {
            ++events;
            intact = intact && id == std::to_string(events) && data == payload;
            return true;
        },
        5000ms);
    writer.join();
    REQUIRE(r.ok());
    CHECK(*r == 200);
    CHECK(refused == 0);
    CHECK(events == 200);
    CHECK(intact);
}

TEST_CASE("stop() with open connections and streams returns promptly", "[unit][http]") {
    Fixture f;
    Client c(f.base());
    REQUIRE(c.get("/echo").ok());    // an idle keep-alive connection
    RawConn idle(f.server->port());  // a connection that never sends anything
    RawConn streaming(f.server->port());
    streaming.send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    auto s = f.slot.wait_stream();
    REQUIRE(s);
    auto t0 = Clock::now();
    f.server->stop();
    CHECK(Clock::now() - t0 < 2s);
    CHECK(f.slot.wait_closed(100ms));
    CHECK_FALSE(s->write("data: x\n\n"));
    CHECK(idle.read_to_eof(2000ms));
    CHECK(streaming.read_to_eof(2000ms));
    f.server->stop();  // idempotent
    auto after = c.get("/echo");
    REQUIRE_FALSE(after.ok());
    CHECK(after.error().code == "connect");
}

TEST_CASE("an idle keep-alive connection is closed by the server and the client reconnects", "[unit][http]") {
    ServerOptions opts;
    opts.idle_timeout = 1s;
    Fixture f(opts);
    Client c(f.base());
    REQUIRE(c.get("/echo").ok());
    std::this_thread::sleep_for(1300ms);
    auto r = c.post_json("/json", {{"after", "idle"}});
    REQUIRE(r.ok());
    CHECK(r->status == 201);
    CHECK(c.connections_opened() == 2);
}

TEST_CASE("start() reports a port in use in one line", "[unit][http]") {
    Fixture f;
    ServerOptions opts;
    opts.port = f.server->port();
    Server second(opts, [](Request&, std::shared_ptr<Responder>) {});
    try {
        second.start();
        FAIL("start() should have thrown");
    } catch (const std::runtime_error& e) {
        std::string msg = e.what();
        CHECK(msg.find("127.0.0.1:" + std::to_string(f.server->port())) != std::string::npos);
        CHECK(msg.find('\n') == std::string::npos);
    }
}

TEST_CASE("client errors are values with stable codes", "[unit][http]") {
    std::uint16_t dead_port;
    {
        Fixture f;
        dead_port = f.server->port();
    }
    Client refused("http://127.0.0.1:" + std::to_string(dead_port));
    auto r = refused.get("/x");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "connect");
    CHECK(r.error().detail.find("127.0.0.1") != std::string::npos);

    for (const char* url : {"ftp://x", "127.0.0.1:80", "http://", "http://host:99999", "http://host:x"}) {
        Client bad(url);
        auto b = bad.get("/");
        REQUIRE_FALSE(b.ok());
        CHECK(b.error().code == "bad_url");
    }

    Fixture f;
    ClientOptions quick;
    quick.timeout = 200ms;
    Client slow(f.base(), quick);
    auto t0 = Clock::now();
    auto t = slow.get("/delay?ms=500");
    REQUIRE_FALSE(t.ok());
    CHECK(t.error().code == "timeout");
    CHECK(Clock::now() - t0 < 450ms);
    auto later = slow.get("/echo");  // a fresh connection after the timeout
    REQUIRE(later.ok());
    CHECK(later->status == 200);
}

TEST_CASE("a base URL prefix and default headers are applied", "[unit][http]") {
    Fixture f;
    ClientOptions opts;
    opts.default_headers = {{"Authorization", "Bearer t0k"}};
    Client c(f.base() + "/echo/", opts);
    auto r = c.get("/sub?x=1");
    REQUIRE(r.ok());
    CHECK(r->json()["path"] == "/echo/sub");
    CHECK(r->json()["headers"]["authorization"] == "Bearer t0k");
}

TEST_CASE("cancel() from another thread ends a long request at once, and every later one", "[unit][http]") {
    Fixture f;
    Client c(f.base(), ClientOptions{30000ms});
    auto t0 = Clock::now();
    std::thread canceller([&] {
        std::this_thread::sleep_for(100ms);
        c.cancel();
    });
    auto r = c.get("/delay?ms=3000");  // the handler sleeps; the fixture waits for it at the end
    canceller.join();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "cancelled");
    CHECK(Clock::now() - t0 < 1500ms);
    auto again = c.get("/echo");
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code == "cancelled");
}

TEST_CASE("cancel() also reaches a connect that hangs", "[unit][http]") {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connecting hangs.
    int ls = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(ls >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    REQUIRE(::listen(ls, 0) == 0);
    std::vector<int> fillers;
    for (int i = 0; i < 8; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        (void)::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
        fillers.push_back(fd);
    }
    std::this_thread::sleep_for(100ms);
    Client c("http://127.0.0.1:" + std::to_string(ntohs(a.sin_port)), ClientOptions{10000ms});
    auto t0 = Clock::now();
    std::thread canceller([&] {
        std::this_thread::sleep_for(300ms);
        c.cancel();
    });
    auto r = c.get("/never");
    canceller.join();
    for (int fd : fillers) ::close(fd);
    ::close(ls);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "cancelled");
    CHECK(Clock::now() - t0 < 3s);
}

TEST_CASE("secrets named in ClientOptions::redact never appear in error details", "[unit][http]") {
    Fixture f;
    ClientOptions o;
    o.timeout = 200ms;
    o.redact = {"s3cr3t-token"};
    Client c(f.base(), o);
    auto r = c.get("/delay?ms=600&token=s3cr3t-token");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == "timeout");
    CHECK(r.error().detail.find("s3cr3t-token") == std::string::npos);
    CHECK(r.error().detail.find("<redacted>") != std::string::npos);
}
