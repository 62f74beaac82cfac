// Publishing (outbox relay → JetStream) and Server-Sent Events, against real servers.
#include "fixture.h"

#include "engram/events/event.h"
#include "engram/nats/nats.h"

#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <set>
#include <thread>

using namespace engram;
using engram::test::StoreFixture;
using nlohmann::json;

namespace {

json ev(const std::string& agg, int n, const std::string& type = "SomethingHappened") {
    return {{"type", type}, {"aggregate_id", agg}, {"data", {{"n", n}}}};
}

std::unique_ptr<nats::Connection> connect(const std::string& url) {
    nats::ConnectOptions o;
    o.url = url;
    auto c = nats::Connection::connect(o);
    REQUIRE(c.ok());
    return std::move(*c);
}

// Every message of the stream, checked against the log: positions 1..N in order, each once, with
// the envelope as body and the event id as Nats-Msg-Id.
void check_stream_equals_log(StoreFixture& f, nats::Connection& nc) {
    auto all = f.get("/events?limit=1000").json()["events"];
    std::vector<json> log(all.begin(), all.end());
    for (auto after = log.empty() ? 0 : log.back()["position"].get<int>(); log.size() % 1000 == 0 && !log.empty();) {
        auto more = f.get("/events?limit=1000&after=" + std::to_string(after)).json()["events"];
        if (more.empty()) break;
        log.insert(log.end(), more.begin(), more.end());
        after = log.back()["position"].get<int>();
    }
    REQUIRE(testing::eventually(
        [&] {
            auto info = nc.stream_info("EVENTS");
            return info.ok() && info->messages == log.size();
        },
        std::chrono::seconds(20)));
    auto info = nc.stream_info("EVENTS");
    REQUIRE(info->messages == log.size());
    std::size_t i = 0;
    for (std::uint64_t seq = info->first_seq; seq <= info->last_seq; seq += 200) {
        auto msgs = nc.get_stream_messages("EVENTS", seq, 200);
        REQUIRE(msgs.ok());
        for (auto& m : *msgs) {
            REQUIRE(i < log.size());
            auto body = json::parse(m.data);
            INFO("stream seq " << m.stream_seq);
            CHECK(body == log[i]);
            CHECK(m.headers["Nats-Msg-Id"] == log[i]["id"]);
            // events.<type>.<partition>, the partition being FNV-1a of the aggregate id mod 16.
            CHECK(m.subject == "events." + log[i]["type"].get<std::string>() + "." +
                                   std::to_string(events::partition_of(log[i]["aggregate_id"].get<std::string>(), 16)));
            CHECK(m.headers["Engram-Position"] == std::to_string(log[i]["position"].get<int>()));
            ++i;
        }
    }
    CHECK(i == log.size());
}

}  // namespace

TEST_CASE("every committed event is published to JetStream once, in position order", "[integration][relay]") {
    StoreFixture f;
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&, t] {
            http::Client c(f.app->url());
            for (int i = 0; i < 100; ++i) {
                auto agg = "agg:" + std::to_string(i % 7);
                auto r = (i % 10 == 0)
                             ? c.post_json("/events", {{"aggregate_id", agg}, {"events", {ev(agg, i), ev(agg, i, "OtherThing")}}})
                             : c.post_json("/events", ev(agg, i));
                REQUIRE(r.ok());
                CHECK(r->status == 201);
            }
        });
    for (auto& t : ts) t.join();
    auto nc = connect(f.nats.url());
    check_stream_equals_log(f, *nc);
    REQUIRE(testing::eventually([&] { return f.get("/readyz").json()["relay"]["lag"] == 0; }));
    CHECK(f.get("/metrics").body.find("engram_relay_lag_events 0") != std::string::npos);
}

TEST_CASE("appends go on while NATS is down and the relay catches up", "[integration][relay][restart]") {
    StoreFixture f;
    // A short duplicate window: after a restart past it, the server no longer remembers the last
    // message id, which must not stop the relay.
    {
        auto pre = connect(f.nats.url());
        nats::StreamConfig sc;
        sc.name = "EVENTS";
        sc.subjects = {"events.>"};
        sc.duplicate_window = std::chrono::milliseconds(1000);
        pre->delete_stream("EVENTS");
        REQUIRE(pre->ensure_stream(sc).ok());
    }
    for (int i = 0; i < 20; ++i) REQUIRE(f.post(ev("agg:n", i)).status == 201);
    auto nc = connect(f.nats.url());
    REQUIRE(testing::eventually([&] {
        auto i = nc->stream_info("EVENTS");
        return i.ok() && i->messages == 20;
    }));
    nc.reset();
    f.nats.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    for (int i = 0; i < 50; ++i) REQUIRE(f.post(ev("agg:n", i)).status == 201);
    REQUIRE(testing::eventually([&] { return f.get("/readyz").status == 503; }));
    auto ready = f.get("/readyz").json();
    CHECK(ready["checks"]["nats"] == "disconnected");
    CHECK(ready["relay"]["lag"].get<int>() > 0);
    f.nats.start();
    for (int i = 0; i < 30; ++i) REQUIRE(f.post(ev("agg:n", i)).status == 201);
    nc = connect(f.nats.url());
    check_stream_equals_log(f, *nc);
    REQUIRE(testing::eventually([&] { return f.get("/readyz").status == 200; }, std::chrono::seconds(20)));
}

TEST_CASE("two stores on one database: one relay publishes, the other takes over", "[integration][relay]") {
    StoreFixture a;
    auto b = std::make_unique<event_store::App>(test::store_config(a.db_url, a.nats.url()));
    REQUIRE(b->start().ok());
    http::Client bc(b->url());
    for (int i = 0; i < 30; ++i) {
        REQUIRE(a.post(ev("agg:two", i)).status == 201);
        auto r = bc.post_json("/events", ev("agg:two", i));
        REQUIRE(r->status == 201);
    }
    auto nc = connect(a.nats.url());
    check_stream_equals_log(a, *nc);
    auto ra = a.get("/readyz").json()["relay"], rb = bc.get("/readyz")->json()["relay"];
    CHECK(ra["active"].get<bool>() != rb["active"].get<bool>());
    // Stop whichever relays; the other takes over and publishes what comes next.
    if (ra["active"].get<bool>()) {
        a.app->stop();
        for (int i = 0; i < 20; ++i) REQUIRE(bc.post_json("/events", ev("agg:two", i))->status == 201);
        REQUIRE(testing::eventually([&] { return bc.get("/readyz")->json()["relay"]["active"] == true; }));
        a.app = std::move(b);  // the fixture reads through the surviving store
        a.client = std::make_unique<http::Client>(a.app->url());
    } else {
        b->stop();
        for (int i = 0; i < 20; ++i) REQUIRE(a.post(ev("agg:two", i)).status == 201);
        REQUIRE(testing::eventually([&] { return a.get("/readyz").json()["relay"]["active"] == true; }));
    }
    check_stream_equals_log(a, *nc);
}

namespace {

bool connect_loopback(int fd, std::uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    return ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

struct Received {
    std::vector<std::int64_t> positions;
    std::vector<std::string> types;
};

// Reads the stream until `n` events arrived (or the idle timeout).
Received read_sse(const std::string& url, const std::string& path, std::size_t n, const http::Headers& h = {}) {
    http::Client c(url);
    Received out;
    auto r = c.sse(
        path, h,
        [&](const std::string& id, const std::string& type, const std::string& data) {
            auto j = json::parse(data);
            CHECK(std::to_string(j["position"].get<std::int64_t>()) == id);
            CHECK(j["type"] == type);
            out.positions.push_back(std::stoll(id));
            out.types.push_back(type);
            return out.positions.size() < n;
        },
        std::chrono::seconds(5));
    return out;
}

}  // namespace

TEST_CASE("an SSE stream catches up from the log and goes live without gap or duplicate", "[integration][sse]") {
    StoreFixture f;
    for (int i = 0; i < 5; ++i) {
        REQUIRE(f.post(ev("session:web:s", i)).status == 201);
        REQUIRE(f.post(ev("session:web:other", i)).status == 201);
    }
    std::atomic<int> failures{0};
    std::thread writer([&] {
        http::Client c(f.app->url());
        for (int i = 0; i < 200; ++i) {
            auto r = c.post_json("/events", ev("session:web:s", i, i % 2 ? "OtherThing" : "SomethingHappened"));
            if (!r.ok() || r->status != 201) failures++;
            if (i % 3 == 0) c.post_json("/events", ev("session:web:other", i));
        }
    });
    auto got = read_sse(f.app->url(), "/events/stream?aggregate_id=session:web:s", 205);
    writer.join();
    CHECK(failures == 0);
    auto log = f.get("/aggregates/session:web:s/events").json()["events"];
    REQUIRE(got.positions.size() == 205);
    for (std::size_t i = 0; i < got.positions.size(); ++i) CHECK(got.positions[i] == log[i]["position"].get<std::int64_t>());

    SECTION("type filter and after") {
        auto only = read_sse(
            f.app->url(),
            "/events/stream?aggregate_id=session:web:s&type=Other*&after=" + std::to_string(log[100]["position"].get<int>()), 50);
        CHECK(only.positions.size() == 50);
        for (auto& t : only.types) CHECK(t == "OtherThing");
        for (auto p : only.positions) CHECK(p > log[100]["position"].get<int>());
    }
    SECTION("Last-Event-ID wins over after") {
        auto resumed = read_sse(f.app->url(), "/events/stream?aggregate_id=session:web:s&after=0", 3,
                                {{"Last-Event-ID", std::to_string(log[202]["position"].get<int>())}});
        REQUIRE(resumed.positions.size() == 2);
        CHECK(resumed.positions[0] == log[203]["position"].get<std::int64_t>());
    }
}

TEST_CASE("SSE parameters are checked", "[integration][sse]") {
    StoreFixture f;
    auto missing = f.get("/events/stream");
    CHECK(missing.status == 400);
    CHECK(missing.json()["error"] == "invalid_parameter");
    CHECK(f.get("/events/stream?aggregate_id=a&type=*x").status == 400);
    CHECK(f.get("/events/stream?aggregate_id=a&after=x").status == 400);
    auto bad = f.client->request("GET", "/events/stream?aggregate_id=a", "", {{"Last-Event-ID", "nope"}});
    CHECK(bad->status == 400);
}

TEST_CASE("SSE clients resuming with Last-Event-ID at random moments miss nothing", "[integration][sse]") {
    StoreFixture f;
    const int total = 400;
    std::thread writer([&] {
        http::Client c(f.app->url());
        for (int i = 0; i < total; ++i) {
            c.post_json("/events", ev("session:web:r", i));
            c.post_json("/events", ev("session:web:noise", i));
        }
    });
    std::mt19937 rng(42);
    std::vector<std::int64_t> got;
    std::string last;
    while (got.size() < static_cast<std::size_t>(total)) {
        std::size_t take = 1 + rng() % 60;
        http::Client c(f.app->url());
        http::Headers h;
        if (!last.empty()) h.emplace_back("Last-Event-ID", last);
        std::size_t n = 0;
        auto r = c.sse(
            "/events/stream?aggregate_id=session:web:r", h,
            [&](const std::string& id, const std::string&, const std::string&) {
                got.push_back(std::stoll(id));
                last = id;
                return ++n < take;
            },
            std::chrono::seconds(5));
        if (!r.ok()) break;  // idle: the writer is done and everything was received, or a bug (checked below)
    }
    writer.join();
    auto log = f.get("/aggregates/session:web:r/events").json()["events"];
    REQUIRE(got.size() == static_cast<std::size_t>(total));
    for (int i = 0; i < total; ++i) CHECK(got[i] == log[i]["position"].get<std::int64_t>());
}

TEST_CASE("a stalled SSE client is cut off without slowing appends", "[integration][sse]") {
    StoreFixture f(std::map<std::string, std::string>{{"EVENT_STORE_SSE_KEEPALIVE_MS", "100"}});
    // A raw client that sends the request and then never reads.
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    REQUIRE(connect_loopback(fd, f.app->port()));
    std::string req = "GET /events/stream?aggregate_id=session:web:slow HTTP/1.1\r\nHost: localhost\r\n\r\n";
    REQUIRE(::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));
    REQUIRE(testing::eventually([&] { return f.get("/metrics").body.find("engram_sse_clients 1") != std::string::npos; }));

    // A healthy client on the same aggregate keeps receiving.
    std::atomic<std::size_t> healthy{0};
    std::thread reader([&] {
        http::Client c(f.app->url());
        c.sse(
            "/events/stream?aggregate_id=session:web:slow", {}, [&](auto&, auto&, auto&) { return ++healthy < 150; },
            std::chrono::seconds(10));
    });
    json big = ev("session:web:slow", 0);
    big["data"]["blob"] = std::string(64 * 1024, 'x');
    for (int i = 0; i < 150; ++i) REQUIRE(f.post(big).status == 201);  // ~10 MB: far over the queue limit
    reader.join();
    CHECK(healthy == 150);
    REQUIRE(testing::eventually([&] { return f.get("/metrics").body.find("engram_sse_clients 0") != std::string::npos; }));
    ::close(fd);
}

TEST_CASE("SSE streams carry a keep-alive comment", "[integration][sse]") {
    StoreFixture f(std::map<std::string, std::string>{{"EVENT_STORE_SSE_KEEPALIVE_MS", "50"}});
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(connect_loopback(fd, f.app->port()));
    std::string req = "GET /events/stream?aggregate_id=a HTTP/1.1\r\nHost: localhost\r\n\r\n";
    ::send(fd, req.data(), req.size(), 0);
    timeval tv{3, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string got;
    char buf[4096];
    while (got.find(": keep-alive") == std::string::npos) {
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        got.append(buf, n);
    }
    ::close(fd);
    CHECK(got.find("HTTP/1.1 200") == 0);
    CHECK(got.find("text/event-stream") != std::string::npos);
    CHECK(got.find(": keep-alive") != std::string::npos);
    REQUIRE(testing::eventually([&] { return f.get("/metrics").body.find("engram_sse_clients 0") != std::string::npos; }));
}

namespace {

// A body well under the 1 MiB body limit whose published envelope is over 1 MiB: nlohmann writes
// 1E14 back as 100000000000000.0.
std::string expanding_body(const std::string& agg) {
    std::string xs;
    for (int i = 0; i < 60000; ++i) xs += i ? ",1E14" : "1E14";
    return R"({"type":"BigThing","aggregate_id":")" + agg + R"(","data":{"xs":[)" + xs + "]}}";
}

}  // namespace

TEST_CASE("an event over the NATS server's max_payload is refused at append with 413 and nothing is written",
          "[integration][relay]") {
    testing::NatsOptions no;
    no.max_payload = 0;  // nats-server's default: 1 MiB
    StoreFixture f({}, no);
    auto body = expanding_body("big:1");
    REQUIRE(body.size() < 400 * 1024);
    auto r = f.post_raw(body);
    CHECK(r.status == 413);
    auto j = r.json();
    CHECK(j["error"] == "payload_too_large");
    CHECK(j["limit"] == 1024 * 1024);
    CHECK(j["size"].get<std::int64_t>() > 1024 * 1024);
    CHECK(j["detail"].get<std::string>().find("max_payload of 1048576 bytes") != std::string::npos);
    CHECK(f.count_rows() == 0);
    // A batch holding one such event is refused whole.
    auto batch = json::parse(body);
    r = f.post({{"aggregate_id", "big:1"}, {"events", {ev("big:1", 1), batch}}});
    CHECK(r.status == 413);
    CHECK(f.count_rows() == 0);
    // The store goes on, and so does the relay.
    REQUIRE(f.post(ev("small:1", 1)).status == 201);
    auto nc = connect(f.nats.url());
    check_stream_equals_log(f, *nc);
    CHECK(f.get("/metrics").body.find("engram_nats_max_payload_bytes 1048576") != std::string::npos);
}

TEST_CASE("with the run command's 8 MiB max_payload the same event is accepted and published", "[integration][relay]") {
    StoreFixture f;  // the harness's server is configured like the run command's
    REQUIRE(f.post_raw(expanding_body("big:2")).status == 201);
    REQUIRE(f.post(ev("big:2", 2)).status == 201);
    auto nc = connect(f.nats.url());
    check_stream_equals_log(f, *nc);
}

TEST_CASE("an event the relay cannot publish blocks it loudly until max_payload is raised", "[integration][relay]") {
    testing::NatsOptions no;
    no.max_payload = 0;
    StoreFixture f({}, no);
    REQUIRE(f.post(ev("agg:b", 1)).status == 201);
    // Stored behind the store's back (as if the server's limit had been lowered after it was accepted).
    {
        pqxx::connection c(f.db_url);
        pqxx::work tx(c);
        tx.exec(
            "INSERT INTO events (position, id, type, aggregate_id, aggregate_version, ts, data, metadata) "
            "VALUES (2, gen_random_uuid(), 'BigThing', 'agg:big', 1, now(), "
            "jsonb_build_object('s', repeat('x', 1100000)), '{}')");
        tx.commit();
    }
    REQUIRE(testing::eventually([&] { return f.get("/readyz").status == 503; }, std::chrono::seconds(20)));
    auto ready = f.get("/readyz").json();
    INFO(ready.dump());
    CHECK(ready["checks"]["relay"].get<std::string>().find("blocked at position 2") != std::string::npos);
    CHECK(ready["relay"]["blocked_position"] == 2);
    CHECK(ready["relay"]["published"] == 1);
    CHECK(f.get("/metrics").body.find("engram_relay_blocked_position 2") != std::string::npos);
    // Raised: the relay goes on by itself, in order.
    {
        std::ofstream(f.nats.dir() + "/nats.conf")
            << "max_payload: 8388608\nauthorization { token: \"" << f.nats.token() << "\" }\n";
    }
    f.nats.stop();
    f.nats.start();
    auto nc = connect(f.nats.url());
    check_stream_equals_log(f, *nc);
    REQUIRE(testing::eventually([&] { return f.get("/readyz").status == 200; }, std::chrono::seconds(20)));
    CHECK(f.get("/metrics").body.find("engram_relay_blocked_position 0") != std::string::npos);
}

namespace {

// A raw event stream request from `source` (any 127.x.y.z: all of 127/8 is loopback); reads until the
// end of the answer's head plus `until`, or 5 s.
struct RawStream {
    int fd = -1;
    std::string got;
    RawStream(const char* source, std::uint16_t port, const std::string& aggregate, const std::string& until) {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd >= 0);
        sockaddr_in from{};
        from.sin_family = AF_INET;
        ::inet_pton(AF_INET, source, &from.sin_addr);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) == 0);
        REQUIRE(connect_loopback(fd, port));
        std::string req = "GET /events/stream?aggregate_id=" + aggregate + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
        REQUIRE(::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));
        timeval tv{5, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[4096];
        while (got.find("\r\n\r\n") == std::string::npos || got.find(until, got.find("\r\n\r\n")) == std::string::npos) {
            auto n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            got.append(buf, static_cast<std::size_t>(n));
        }
    }
    ~RawStream() { close(); }
    void close() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    json body() const { return json::parse(got.substr(got.find("\r\n\r\n") + 4), nullptr, false); }
};

}  // namespace

TEST_CASE("event streams are capped in all and per client address, each with a clear error", "[integration][sse]") {
    StoreFixture f(
        std::map<std::string, std::string>{{"EVENT_STORE_SSE_MAX_STREAMS", "3"}, {"EVENT_STORE_SSE_MAX_PER_CLIENT", "2"}});
    auto clients = [&](int n) {
        return testing::eventually(
            [&] { return f.get("/metrics").body.find("engram_sse_clients " + std::to_string(n) + "\n") != std::string::npos; });
    };
    std::vector<std::unique_ptr<RawStream>> mine;
    for (int i = 0; i < 2; ++i) {
        mine.push_back(std::make_unique<RawStream>("127.0.0.1", f.app->port(), "session:web:cap", "retry: 1000"));
        REQUIRE(mine.back()->got.rfind("HTTP/1.1 200", 0) == 0);
    }
    REQUIRE(clients(2));

    // A third from the same address: 429, nothing registered.
    RawStream third("127.0.0.1", f.app->port(), "session:web:cap", "}");
    CHECK(third.got.rfind("HTTP/1.1 429", 0) == 0);
    CHECK(third.got.find("Retry-After: 5\r\n") != std::string::npos);
    auto err = third.body();
    CHECK(err["error"] == "too_many_client_streams");
    CHECK(err["limit"] == 2);
    CHECK(err["detail"].get<std::string>().find("127.0.0.1") != std::string::npos);
    // The client sees the status too (the store's JSON body is dropped).
    http::Client c(f.app->url());
    auto status = c.sse(
        "/events/stream?aggregate_id=session:web:cap", {}, [](auto&, auto&, auto&) { return true; }, std::chrono::seconds(5));
    REQUIRE(status.ok());
    CHECK(*status == 429);

    // Another address still gets a stream, up to the cap in all; then 503.
    RawStream other("127.0.0.2", f.app->port(), "session:web:cap", "retry: 1000");
    CHECK(other.got.rfind("HTTP/1.1 200", 0) == 0);
    REQUIRE(clients(3));
    RawStream over("127.0.0.3", f.app->port(), "session:web:cap", "}");
    CHECK(over.got.rfind("HTTP/1.1 503", 0) == 0);
    CHECK(over.got.find("Retry-After: 5\r\n") != std::string::npos);
    CHECK(over.body()["error"] == "too_many_streams");
    CHECK(over.body()["limit"] == 3);
    auto metrics = f.get("/metrics").body;
    CHECK(metrics.find("engram_sse_clients 3\n") != std::string::npos);
    CHECK(metrics.find("engram_sse_refused_total{cap=\"per_client\"} 2") != std::string::npos);
    CHECK(metrics.find("engram_sse_refused_total{cap=\"max_streams\"} 1") != std::string::npos);

    // A stream that ends gives its place back; the store serves on.
    mine.pop_back();
    REQUIRE(clients(2));
    REQUIRE(f.post(ev("session:web:cap", 1)).status == 201);
    int events = 0;
    auto again = c.sse(
        "/events/stream?aggregate_id=session:web:cap", {}, [&](auto&, auto&, auto&) { return ++events < 1; },
        std::chrono::seconds(5));
    REQUIRE(again.ok());
    CHECK(*again == 200);
    CHECK(events == 1);
    CHECK(f.get("/events?limit=10").json()["events"].size() == 1);
}
