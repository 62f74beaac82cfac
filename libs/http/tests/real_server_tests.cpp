// The client against servers that are not ours: Python's http.server (tests/fakes/py_http_fake.py)
// and nginx as a reverse proxy. Both frame answers the way real servers do — the header in its own
// segment, chunked bodies in several chunks, bodies that end when the connection closes — which
// our Beast-based fakes (one write per answer) never exercise.
#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <thread>

#include "engram/http/client.h"
#include "engram/http/server.h"
#include "engram/testing/testing.h"

using namespace engram;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

json route(const std::string& method, const std::string& path, json extra) {
    json r = {{"method", method}, {"path", path}};
    r.update(extra);
    return r;
}

// An SSE body cut by the fake at odd places (inside "data:", between \r and \n).
const std::vector<std::string> kFrames = {
    "retry: 1000\n\n",         "id: 1\nevent: First\ndata: {\"n\":1}\n\n",
    ": keep-alive\n\n",        "id: 2\r\nevent: Second\r\ndata: line one\r\ndata: line two\r\n\r\n",
    "data: no id or type\n\n", "id: 3\nevent: Third\ndata: {\"n\":3}\n\n"};

void check_frames(const std::vector<std::tuple<std::string, std::string, std::string>>& got) {
    REQUIRE(got.size() == 4);
    CHECK(got[0] == std::make_tuple(std::string("1"), std::string("First"), std::string(R"({"n":1})")));
    CHECK(got[1] == std::make_tuple(std::string("2"), std::string("Second"), std::string("line one\nline two")));
    CHECK(got[2] == std::make_tuple(std::string("2"), std::string("message"), std::string("no id or type")));
    CHECK(got[3] == std::make_tuple(std::string("3"), std::string("Third"), std::string(R"({"n":3})")));
}

}  // namespace

TEST_CASE("every framing of Python's http.server is read, 200 requests without a failure", "[integration][http]") {
    const json payload = {{"answer", std::string(3000, 'a')}, {"n", 42}};
    testing::PyHttpFake fake(json::array({
        route("GET", "/cycle", {{"json", payload}, {"mode", "cycle"}, {"delay_ms", 2}}),
        route("GET", "/split", {{"json", payload}, {"mode", "split"}, {"delay_ms", 30}}),
        route("GET", "/chunked", {{"json", payload}, {"mode", "chunked"}, {"chunks", 5}, {"delay_ms", 10}}),
        route("GET", "/close", {{"json", payload}, {"mode", "close"}, {"chunks", 4}, {"delay_ms", 10}}),
        route("HEAD", "/split", {{"json", payload}, {"mode", "split"}}),
        route("POST", "/echo", {{"builtin", "echo"}, {"mode", "split"}, {"delay_ms", 5}}),
        route("GET", "/empty", {{"status", 204}, {"body", ""}, {"mode", "split"}}),
    }));
    http::Client c(fake.url());

    SECTION("each framing once, with a pause long enough that the parts cannot arrive together") {
        for (const char* path : {"/split", "/chunked", "/close"}) {
            INFO(path);
            auto r = c.get(path);
            REQUIRE(r.ok());
            CHECK(r->status == 200);
            CHECK(r->json() == payload);
        }
        auto head = c.request("HEAD", "/split");
        REQUIRE(head.ok());
        CHECK(head->status == 200);
        CHECK(head->body.empty());
        auto none = c.get("/empty");
        REQUIRE(none.ok());
        CHECK(none->status == 204);
        auto post = c.post_json("/echo", {{"hello", "wörld"}});
        REQUIRE(post.ok());
        CHECK(json::parse(post->json()["body"].get<std::string>()) == json{{"hello", "wörld"}});
    }

    SECTION("200 requests on one client, the framings in turn") {
        int failures = 0;
        for (int i = 0; i < 200; ++i) {
            auto r = c.get("/cycle?i=" + std::to_string(i));
            if (!r.ok() || r->status != 200 || r->json() != payload) {
                ++failures;
                UNSCOPED_INFO("request " << i << ": " << (r.ok() ? r->body.substr(0, 200) : r.error().detail));
            }
        }
        CHECK(failures == 0);
        // Kept alive across the Content-Length and chunked answers; a new connection only after each
        // answer that ended by closing (every fourth).
        CHECK(c.connections_opened() == 51);
        CHECK(fake.connections() >= 51);
    }
}

TEST_CASE("server-sent events from Python's http.server, cut at odd places", "[integration][http]") {
    testing::PyHttpFake fake(json::array({route("GET", "/sse", {{"mode", "sse"}, {"events", kFrames}, {"delay_ms", 5}})}));
    http::Client c(fake.url());
    for (int round = 0; round < 3; ++round) {
        std::vector<std::tuple<std::string, std::string, std::string>> got;
        auto r = c.sse(
            "/sse", {},
            [&](const std::string& id, const std::string& ev, const std::string& data) {
                got.emplace_back(id, ev, data);
                return true;
            },
            5000ms);
        REQUIRE(r.ok());
        CHECK(*r == 200);
        check_frames(got);
    }
}

TEST_CASE("through nginx: 200 requests to the Python fake and to our server, and an event stream", "[integration][http]") {
    const json payload = {{"answer", std::string(2000, 'n')}};

    SECTION("nginx in front of Python's http.server") {
        testing::PyHttpFake fake(json::array({
            route("GET", "/cycle", {{"json", payload}, {"mode", "cycle"}, {"delay_ms", 2}}),
            route("GET", "/events/stream", {{"mode", "sse"}, {"events", kFrames}, {"delay_ms", 5}}),
        }));
        testing::Nginx nginx(fake.url());
        http::Client c(nginx.url());
        int failures = 0;
        for (int i = 0; i < 200; ++i) {
            auto r = c.get("/cycle?i=" + std::to_string(i));
            if (!r.ok() || r->status != 200 || r->json() != payload) {
                ++failures;
                UNSCOPED_INFO("request " << i << ": " << (r.ok() ? r->body.substr(0, 200) : r.error().detail));
            }
        }
        CHECK(failures == 0);
        CHECK(c.connections_opened() == 1);  // nginx keeps the client's connection whatever the upstream did
        std::vector<std::tuple<std::string, std::string, std::string>> got;
        auto r = c.sse(
            "/events/stream", {},
            [&](const std::string& id, const std::string& ev, const std::string& data) {
                got.emplace_back(id, ev, data);
                return true;
            },
            5000ms);
        REQUIRE(r.ok());
        CHECK(*r == 200);
        check_frames(got);
        INFO(nginx.error_log());
        CHECK(testing::eventually([&] { return nginx.count("200 \"GET /events/stream HTTP/1.1\" upstream=200") == 1; }));
    }

    SECTION("nginx in front of engram::http::Server, live events unbuffered") {
        std::mutex mu;
        std::shared_ptr<http::Stream> live;
        http::Server server({}, [&](http::Request& req, std::shared_ptr<http::Responder> res) {
            if (req.path == "/events/stream") {
                std::lock_guard lk(mu);
                live = res->start_stream(200, "text/event-stream");
                live->write("id: 1\nevent: Live\ndata: {}\n\n");
                return;
            }
            res->respond(http::Response::json(200, payload));
        });
        server.start();
        testing::Nginx nginx("http://127.0.0.1:" + std::to_string(server.port()));
        http::Client c(nginx.url());
        int failures = 0;
        for (int i = 0; i < 200; ++i) {
            auto r = c.get("/json?i=" + std::to_string(i));
            failures += !(r.ok() && r->status == 200 && r->json() == payload);
        }
        CHECK(failures == 0);
        // Each event reaches the client while the stream stays open: nginx does not buffer it.
        int seen = 0;
        auto r = c.sse(
            "/events/stream", {},
            [&](const std::string& id, const std::string&, const std::string&) {
                ++seen;
                if (seen == 3) return false;
                std::lock_guard lk(mu);
                if (live) live->write("id: " + std::to_string(std::stoi(id) + 1) + "\nevent: Live\ndata: {}\n\n");
                return true;
            },
            5000ms);
        REQUIRE(r.ok());
        CHECK(seen == 3);
        server.stop();
    }
}

TEST_CASE("the response limit holds for every framing of Python's http.server", "[integration][http]") {
    const std::string big(300 * 1024, 'b');
    testing::PyHttpFake fake(json::array({
        route("GET", "/split", {{"body", big}, {"mode", "split"}}),
        route("GET", "/plain", {{"body", big}, {"mode", "plain"}}),
        route("GET", "/chunked", {{"body", big}, {"mode", "chunked"}, {"chunks", 6}, {"delay_ms", 2}}),
        route("GET", "/close", {{"body", big}, {"mode", "close"}, {"chunks", 6}, {"delay_ms", 2}}),
        route("GET", "/small", {{"json", {{"ok", true}}}, {"mode", "split"}}),
        route("GET", "/refused", {{"status", 429}, {"json", {{"error", "slow_down"}}}, {"mode", "split"}}),
        route("GET", "/endless-line", {{"mode", "sse"}, {"events", {"data: " + big}}, {"chunks", 8}, {"delay_ms", 1}}),
    }));
    http::ClientOptions o;
    o.response_limit = 100 * 1024;
    http::Client c(fake.url(), o);
    for (const char* path : {"/split", "/plain", "/chunked", "/close"}) {
        INFO(path);
        auto r = c.get(path);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == "response_too_large");
        CHECK(r.error().detail.find("102400 bytes") != std::string::npos);
        auto after = c.get("/small");
        REQUIRE(after.ok());
        CHECK(after->json()["ok"] == true);
    }
    auto cb = [](const std::string&, const std::string&, const std::string&) { return true; };
    auto line = c.sse("/endless-line", {}, cb, 5000ms);
    REQUIRE_FALSE(line.ok());
    CHECK(line.error().code == "response_too_large");
    // A refused stream whose header comes alone, then a Content-Length body.
    auto refused = c.sse("/refused", {}, cb, 5000ms);
    REQUIRE(refused.ok());
    CHECK(*refused == 429);
}

TEST_CASE("through nginx in front of the real event store: 200 requests and the event stream, caught up and live",
          "[integration][http]") {
    testing::Stack s("http-nginx-store");
    testing::Nginx nginx(s.url());
    http::Client c(nginx.url());
    int failures = 0;
    std::string last_id;
    for (int i = 0; i < 200; ++i) {
        Result<http::ClientResponse> r = Error::make("none", "");
        switch (i % 3) {
            case 0:
                r = c.post_json("/events", {{"type", "NoteTaken"}, {"aggregate_id", "user:nginx"}, {"data", {{"n", i}}}});
                if (r && r->status == 201) last_id = r->json()["events"][0]["id"];
                failures += !(r && r->status == 201);
                break;
            case 1:
                r = c.get("/events/" + last_id);
                failures += !(r && r->status == 200 && r->json()["id"] == last_id);
                break;
            default:
                r = c.get("/aggregates/user:nginx/events?limit=1000");
                failures += !(r && r->status == 200 && r->json()["events"].size() == static_cast<std::size_t>(i / 3 + 1));
        }
        if (!r) UNSCOPED_INFO("request " << i << ": " << r.error().detail);
    }
    CHECK(failures == 0);

    // Catch-up (67 past events), then live ones appended while the stream is open.
    std::vector<std::int64_t> positions;
    std::atomic<std::size_t> seen{0};
    std::thread writer([&] {
        http::Client w(s.url());
        testing::eventually([&] { return seen.load() >= 67; });  // the writer only starts once caught up
        for (int i = 0; i < 5; ++i)
            (void)w.post_json("/events", {{"type", "NoteTaken"}, {"aggregate_id", "user:nginx"}, {"data", {{"live", i}}}});
    });
    auto r = c.sse(
        "/events/stream?aggregate_id=user:nginx", {},
        [&](const std::string& id, const std::string& type, const std::string& data) {
            positions.push_back(std::stoll(id));
            seen = positions.size();
            return type == "NoteTaken" && json::parse(data)["data"].value("live", -1) != 4;
        },
        10000ms);
    writer.join();
    REQUIRE(r.ok());
    CHECK(*r == 200);
    REQUIRE(positions.size() == 72);
    for (std::size_t i = 1; i < positions.size(); ++i) CHECK(positions[i] == positions[i - 1] + 1);
    INFO(nginx.error_log());
    CHECK(testing::eventually(
        [&] { return nginx.count("200 \"GET /events/stream?aggregate_id=user:nginx HTTP/1.1\" upstream=200") == 1; }));
}
