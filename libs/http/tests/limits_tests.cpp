// What a stranger can make the client buffer (ClientOptions::response_limit), what is redacted, and
// (below) the caps of the server: connections, idle keep-alive, the handler queue.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "engram/http/client.h"
#include "engram/http/server.h"
#include "engram/http/url.h"

using namespace engram;
using namespace engram::http;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

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
