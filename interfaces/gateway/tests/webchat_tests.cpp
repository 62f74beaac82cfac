// The web chat's HTTP side against the real event store binary: the session comes only from the
// signed cookie, every bad message is refused with nothing stored, a retried message is stored once,
// and a browser's event stream carries its own session's events and nobody else's.
#include "support.h"

#include "engram/http/client.h"
#include "engram/nats/nats.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>
#include <atomic>
#include <cctype>
#include <mutex>
#include <thread>

using namespace engram;
using gateway::test::require_error;
using nlohmann::json;

namespace {

struct Fixture {
    // The store and the gateway both require the API token: the web chat works without it.
    testing::Stack stack{"webchat", {{"ENGRAM_API_TOKEN", "t0k"}}};
    std::string store_url = stack.url();
    gateway::test::InProcess gw{stack, {{"ENGRAM_API_TOKEN", "t0k"}, {"WEBCHAT_SECRET", "a-test-secret-of-enough-length"}}};
    std::unique_ptr<gateway::App>& app = gw.app;
    std::unique_ptr<http::Client>& client = gw.client;

    std::int64_t count(const std::string& type) { return stack.count(type); }

    // A new browser: GET / and keep the cookie value it was given.
    std::string new_session() {
        auto r = client->get("/");
        REQUIRE(r.ok());
        REQUIRE(r->status == 200);
        auto sc = r->header("set-cookie");
        REQUIRE(sc.rfind("engram_chat=", 0) == 0);
        return sc.substr(12, sc.find(';') - 12);
    }

    http::ClientResponse post(const std::string& cookie, const std::string& body,
                              const std::string& content_type = "application/json") {
        http::Headers h;
        if (!content_type.empty()) h.emplace_back("Content-Type", content_type);
        if (!cookie.empty()) h.emplace_back("Cookie", "engram_chat=" + cookie);
        auto r = client->request("POST", "/chat/messages", body, h);
        REQUIRE(r.ok());
        return *r;
    }

    http::ClientResponse say(const std::string& cookie, const std::string& id, const std::string& text) {
        return post(cookie, json{{"id", id}, {"text", text}}.dump());
    }

    // Reads the browser's event stream until `until` returns true for an event (or 5 s of silence).
    struct Seen {
        int status = 0;
        std::vector<json> events;
        std::vector<std::string> ids;
    };
    Seen stream(const std::string& cookie_header, const std::function<bool(const json&)>& until,
                const std::string& path = "/chat/events", http::Headers extra = {}) {
        http::Client c(app->url());
        Seen s;
        if (!cookie_header.empty()) extra.emplace_back("Cookie", cookie_header);
        auto r = c.sse(
            path, extra,
            [&](const std::string& id, const std::string&, const std::string& data) {
                s.ids.push_back(id);
                s.events.push_back(json::parse(data));
                return !until(s.events.back());
            },
            std::chrono::milliseconds(5000));
        REQUIRE(r.ok());
        s.status = *r;
        return s;
    }

    std::string metric(const std::string& name) {
        auto r = client->get("/metrics", {{"Authorization", "Bearer t0k"}});
        REQUIRE(r.ok());
        auto at = r->body.find("\n" + name + " ");
        if (at == std::string::npos) return "";
        auto end = r->body.find('\n', at + 1);
        return r->body.substr(at + name.size() + 2, end - at - name.size() - 2);
    }
};

std::string uuid_of(const std::string& cookie) { return cookie.substr(0, cookie.find('.')); }

bool text_is(const json& e, const std::string& text) { return e["data"].value("text", "") == text; }

}  // namespace

TEST_CASE("web chat: GET / serves the page and issues a signed HttpOnly session cookie", "[integration][gateway][webchat]") {
    Fixture f;
    auto r = f.client->get("/");
    REQUIRE(r.ok());
    REQUIRE(r->status == 200);
    CHECK(r->header("content-type").rfind("text/html", 0) == 0);
    CHECK(r->body.find("/static/chat.js") != std::string::npos);
    CHECK(r->header("cache-control") == "no-store");
    CHECK(r->header("content-security-policy").find("script-src 'self'") != std::string::npos);
    auto sc = r->header("set-cookie");
    INFO(sc);
    REQUIRE(sc.rfind("engram_chat=", 0) == 0);
    CHECK(sc.find("HttpOnly") != std::string::npos);
    CHECK(sc.find("SameSite=Lax") != std::string::npos);
    CHECK(sc.find("Path=/") != std::string::npos);
    CHECK(sc.find("Secure") == std::string::npos);
    std::string cookie = sc.substr(12, sc.find(';') - 12);
    auto dot = cookie.find('.');
    REQUIRE(dot == 36);  // <uuid>.<issued, Unix s>.<hmac-sha256 hex>
    CHECK(cookie.size() == 36 + 1 + 10 + 1 + 64);

    // Each browser gets its own session; one that has a valid cookie keeps it.
    CHECK(f.new_session() != cookie);
    auto again = f.client->get("/", {{"Cookie", "theme=dark; engram_chat=" + cookie}});
    CHECK(again->status == 200);
    CHECK(again->header("set-cookie").empty());
    auto forged = f.client->get("/", {{"Cookie", "engram_chat=" + cookie.substr(0, 37) + std::string(64, '0')}});
    CHECK(forged->header("set-cookie").rfind("engram_chat=", 0) == 0);
    // Behind a TLS proxy the cookie is Secure.
    auto tls = f.client->get("/", {{"X-Forwarded-Proto", "https"}});
    CHECK(tls->header("set-cookie").find("; Secure") != std::string::npos);

    auto session = f.client->get("/chat/session", {{"Cookie", "engram_chat=" + cookie}});
    REQUIRE(session->status == 200);
    CHECK(session->json()["session_id"] == "session:web:" + uuid_of(cookie));
    CHECK(session->json()["user_id"] == "web:" + uuid_of(cookie));
    require_error(*f.client->get("/chat/session"), 401, "unauthorized");

    // Assets: served with an ETag, revalidated with 304.
    auto js = f.client->get("/static/chat.js");
    REQUIRE(js->status == 200);
    CHECK(js->header("content-type").rfind("text/javascript", 0) == 0);
    CHECK(js->body.find("EventSource") != std::string::npos);
    auto etag = js->header("etag");
    REQUIRE(!etag.empty());
    CHECK(f.client->get("/static/chat.js", {{"If-None-Match", etag}})->status == 304);
    CHECK(f.client->get("/static/chat.css")->header("content-type").rfind("text/css", 0) == 0);
    require_error(*f.client->get("/static/nope.js"), 404, "not_found");
    require_error(*f.client->request("POST", "/", "x", {}), 405, "method_not_allowed");

    // The API token still guards the rest of the gateway.
    require_error(*f.client->post_json("/trigger", {{"source", "api"}, {"user_id", "u"}, {"message", "hi"}}), 401,
                  "unauthorized");
}

TEST_CASE("web chat: a message without or with a forged cookie is refused with nothing stored",
          "[integration][gateway][webchat]") {
    Fixture f;
    auto cookie = f.new_session();
    auto other = f.new_session();
    std::string body = R"({"id":"m-1","text":"hello"})";
    require_error(f.post("", body), 401, "unauthorized");
    require_error(f.post("garbage", body), 401, "unauthorized");
    require_error(f.post(uuid_of(cookie), body), 401, "unauthorized");
    require_error(f.post(uuid_of(cookie) + "." + std::string(64, 'a'), body), 401, "unauthorized");
    // One session's id with another session's signature.
    require_error(f.post(uuid_of(cookie) + other.substr(36), body), 401, "unauthorized");
    // A flipped character of a valid signature.
    std::string flipped = cookie;
    flipped.back() = flipped.back() == '0' ? '1' : '0';
    require_error(f.post(flipped, body), 401, "unauthorized");
    // Upper-cased UUID: not the canonical form the gateway signed.
    std::string upper = cookie;
    for (std::size_t i = 0; i < 36; ++i) upper[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(upper[i])));
    if (upper != cookie) require_error(f.post(upper, body), 401, "unauthorized");
    // The API token is no substitute for the cookie.
    {
        auto r = f.client->request("POST", "/chat/messages", body,
                                   {{"Content-Type", "application/json"}, {"Authorization", "Bearer t0k"}});
        require_error(*r, 401, "unauthorized");
    }
    CHECK(f.count("MessageReceived") == 0);
    CHECK(f.post(cookie, body).status == 201);
    CHECK(f.count("MessageReceived") == 1);
}

TEST_CASE("web chat: bad messages are refused with 400, 413 or 415 and nothing stored", "[integration][gateway][webchat]") {
    Fixture f;
    auto c = f.new_session();
    require_error(f.post(c, "{nope"), 400, "invalid_json");
    require_error(f.post(c, "\"\xff\xfe\""), 400, "invalid_json");  // not UTF-8
    require_error(f.post(c, "[1,2]"), 400, "invalid_request");
    require_error(f.post(c, R"({"text":"hi"})"), 400, "invalid_request", "id");
    require_error(f.post(c, R"({"id":"","text":"hi"})"), 400, "invalid_request", "id");
    require_error(f.post(c, R"({"id":7,"text":"hi"})"), 400, "invalid_request", "id");
    require_error(f.post(c, R"({"id":"a b","text":"hi"})"), 400, "invalid_request", "id");
    require_error(f.post(c, json{{"id", std::string(65, 'x')}, {"text", "hi"}}.dump()), 400, "invalid_request", "id");
    require_error(f.post(c, R"({"id":"m1"})"), 400, "invalid_request", "text");
    require_error(f.post(c, R"({"id":"m1","text":""})"), 400, "invalid_request", "text");
    require_error(f.post(c, R"({"id":"m1","text":"  \n\t "})"), 400, "invalid_request", "text");
    require_error(f.post(c, R"({"id":"m1","text":42})"), 400, "invalid_request", "text");
    require_error(f.post(c, json{{"id", "m1"}, {"text", std::string(8001, 'x')}}.dump()), 400, "invalid_request", "8000");
    // 8000 characters of 2 bytes each is within the limit; the body limit counts bytes.
    std::string eight_k_umlauts;
    for (int i = 0; i < 8000; ++i) eight_k_umlauts += "\xc3\xa4";
    require_error(f.post(c, json{{"id", "m2"}, {"text", eight_k_umlauts + "x"}}.dump()), 400, "invalid_request", "8000");
    require_error(f.post(c, json{{"id", "m1"}, {"text", "hi"}, {"pad", std::string(70 << 10, ' ')}}.dump()), 413,
                  "payload_too_large");
    require_error(f.post(c, json{{"id", "m1"}, {"text", std::string(2 << 20, 'x')}}.dump()), 413, "payload_too_large");
    require_error(f.post(c, R"({"id":"m1","text":"hi"})", "text/plain"), 415, "unsupported_media_type");
    require_error(f.post(c, R"({"id":"m1","text":"hi"})", ""), 415, "unsupported_media_type");
    require_error(*f.client->get("/chat/messages", {{"Cookie", "engram_chat=" + c}}), 405, "method_not_allowed");
    CHECK(f.count("MessageReceived") == 0);

    auto ok = f.post(c, json{{"id", "m2"}, {"text", eight_k_umlauts}}.dump());
    INFO(ok.body);
    CHECK(ok.status == 201);
    CHECK(f.count("MessageReceived") == 1);
}

TEST_CASE("web chat: a retried message is stored once as MessageReceived on the browser's session",
          "[integration][gateway][webchat]") {
    Fixture f;
    auto c = f.new_session();
    auto a = f.say(c, "6f1c1a52-3d4e-4e1a-9d43-0d6b1f0f7a11", "remember that my favourite colour is blue");
    INFO(a.body);
    REQUIRE(a.status == 201);
    auto b = f.say(c, "6f1c1a52-3d4e-4e1a-9d43-0d6b1f0f7a11", "remember that my favourite colour is blue");
    REQUIRE(b.status == 200);
    CHECK(a.json()["event_id"] == b.json()["event_id"]);
    CHECK(a.json()["position"] == b.json()["position"]);
    CHECK(f.count("MessageReceived") == 1);
    // The same message id with another text is a conflict, not a second message.
    require_error(f.say(c, "6f1c1a52-3d4e-4e1a-9d43-0d6b1f0f7a11", "something else"), 409, "id_conflict");
    // The same client id in another session is another message.
    auto other = f.new_session();
    CHECK(f.say(other, "6f1c1a52-3d4e-4e1a-9d43-0d6b1f0f7a11", "remember that my favourite colour is blue").status == 201);
    CHECK(f.count("MessageReceived") == 2);

    std::string session = "session:web:" + uuid_of(c);
    CHECK(a.json()["session_id"] == session);
    http::Client store(f.store_url);
    auto ev = store.get("/events/" + a.json()["event_id"].get<std::string>(), {{"Authorization", "Bearer t0k"}});
    REQUIRE(ev->status == 200);
    auto e = ev->json();
    CHECK(e["type"] == "MessageReceived");
    CHECK(e["aggregate_id"] == session);
    CHECK(e["data"]["channel"] == "web");
    CHECK(e["data"]["text"] == "remember that my favourite colour is blue");
    CHECK(e["data"]["user_id"] == "web:" + uuid_of(c));
    CHECK(e["data"]["session_id"] == session);
    CHECK(e["metadata"]["source"] == "gateway:web");
    CHECK(e["metadata"]["correlation_id"] == e["id"]);
    CHECK(e["metadata"]["user_id"] == "web:" + uuid_of(c));
    CHECK(e["metadata"]["session_id"] == session);
}

TEST_CASE("web chat: /chat/events carries the browser's own session only, from the start, live and resumed",
          "[integration][gateway][webchat]") {
    Fixture f;
    auto a = f.new_session();
    auto b = f.new_session();
    REQUIRE(f.say(a, "a1", "first from a").status == 201);
    REQUIRE(f.say(b, "b1", "first from b").status == 201);
    auto a2 = f.say(a, "a2", "second from a");
    REQUIRE(a2.status == 201);
    std::string sa = "session:web:" + uuid_of(a);

    // Catch-up: a reload replays the conversation so far, and nothing of b's.
    auto seen = f.stream("engram_chat=" + a, [](const json& e) { return text_is(e, "second from a"); });
    REQUIRE(seen.events.size() == 2);
    for (auto& e : seen.events) CHECK(e["aggregate_id"] == sa);
    CHECK(text_is(seen.events[0], "first from a"));
    CHECK(seen.ids[1] == std::to_string(a2.json()["position"].get<std::int64_t>()));

    // Naming another session in the query changes nothing: the cookie decides.
    auto named = f.stream(
        "engram_chat=" + a, [](const json& e) { return text_is(e, "second from a"); },
        "/chat/events?aggregate_id=session:web:" + uuid_of(b));
    for (auto& e : named.events) CHECK(e["aggregate_id"] == sa);

    // Resume after the last seen position (EventSource's Last-Event-ID, or ?after=).
    std::thread later([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        http::Client c(f.app->url());
        (void)c.request("POST", "/chat/messages", R"({"id":"b2","text":"second from b"})",
                        {{"Content-Type", "application/json"}, {"Cookie", "engram_chat=" + b}});
        (void)c.request("POST", "/chat/messages", R"({"id":"a3","text":"live for a"})",
                        {{"Content-Type", "application/json"}, {"Cookie", "engram_chat=" + a}});
    });
    auto live = f.stream("engram_chat=" + a, [](const json& e) { return text_is(e, "live for a"); }, "/chat/events",
                         {{"Last-Event-ID", seen.ids[1]}});
    later.join();
    REQUIRE(live.events.size() == 1);
    CHECK(text_is(live.events[0], "live for a"));
    auto after = f.stream(
        "engram_chat=" + a, [](const json& e) { return text_is(e, "live for a"); }, "/chat/events?after=" + seen.ids[0]);
    REQUIRE(after.events.size() == 2);
    CHECK(text_is(after.events[0], "second from a"));

    http::Client c(f.app->url());
    require_error(*c.get("/chat/events", {{"Cookie", "engram_chat=" + a}, {"Last-Event-ID", "x1"}}), 400, "invalid_parameter");
    require_error(*c.get("/chat/events?after=-1", {{"Cookie", "engram_chat=" + a}}), 400, "invalid_parameter");
    // Every stream closed by its reader has released its upstream.
    CHECK(testing::eventually([&] { return f.metric("engram_gateway_webchat_streams") == "0"; }));
}

TEST_CASE("web chat: a missing or forged cookie cannot open any session's stream", "[integration][gateway][webchat]") {
    Fixture f;
    auto a = f.new_session();
    auto b = f.new_session();
    REQUIRE(f.say(a, "a1", "secret of a").status == 201);
    auto status = [&](const std::string& cookie_header) {
        http::Client c(f.app->url());
        http::Headers h;
        if (!cookie_header.empty()) h.emplace_back("Cookie", cookie_header);
        auto r = c.get("/chat/events", h);
        REQUIRE(r.ok());
        INFO(r->body);
        CHECK(r->body.find("secret of a") == std::string::npos);
        return r->status;
    };
    CHECK(status("") == 401);
    CHECK(status("engram_chat=" + uuid_of(a)) == 401);
    CHECK(status("engram_chat=" + uuid_of(a) + b.substr(36)) == 401);  // a's id, b's signature
    std::string flipped = a;
    flipped.back() = flipped.back() == 'f' ? 'e' : 'f';
    CHECK(status("engram_chat=" + flipped) == 401);
    CHECK(status("engram_chat=" + uuid_of(a) + "." + std::string(64, '0')) == 401);
    // The API token opens the gateway's API, not a browser's session.
    {
        http::Client c(f.app->url());
        CHECK(c.get("/chat/events", {{"Authorization", "Bearer t0k"}})->status == 401);
    }
    // b's own cookie opens b's stream, where a's message is not.
    REQUIRE(f.say(b, "b1", "b's own").status == 201);
    auto seen = f.stream("engram_chat=" + b, [](const json& e) { return text_is(e, "b's own"); });
    REQUIRE(seen.events.size() == 1);
    CHECK(seen.events[0]["aggregate_id"] == "session:web:" + uuid_of(b));
}

TEST_CASE("web chat: open streams end when the browser leaves and when the gateway stops", "[integration][gateway][webchat]") {
    Fixture f;
    auto a = f.new_session();
    REQUIRE(f.say(a, "a1", "hello").status == 201);
    // Several browsers stay connected; the gateway's stop ends their streams promptly.
    std::vector<std::thread> readers;
    std::atomic<int> ended{0};
    for (int i = 0; i < 4; ++i)
        readers.emplace_back([&] {
            http::Client c(f.app->url());
            (void)c.sse(
                "/chat/events", {{"Cookie", "engram_chat=" + a}}, [](auto&&...) { return true; },
                std::chrono::milliseconds(30000));
            ++ended;
        });
    REQUIRE(testing::eventually([&] { return f.metric("engram_gateway_webchat_streams") == "4"; }));
    // One more reader that leaves after the first event frees its upstream at once.
    f.stream("engram_chat=" + a, [](const json&) { return true; });
    REQUIRE(testing::eventually([&] { return f.metric("engram_gateway_webchat_streams") == "4"; }));

    auto t0 = std::chrono::steady_clock::now();
    f.app->stop();
    for (auto& t : readers) t.join();
    CHECK(ended == 4);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
    f.app.reset();  // joins the web chat's thread
}

TEST_CASE("web chat: the store being down is 503 for messages and streams, and nothing is half-stored",
          "[integration][gateway][webchat]") {
    Fixture f;
    auto a = f.new_session();
    f.stack.kill_store();
    require_error(f.say(a, "a1", "hello"), 503, "unavailable");
    http::Client c(f.app->url());
    require_error(*c.get("/chat/events", {{"Cookie", "engram_chat=" + a}}), 503, "unavailable");
}

TEST_CASE("web chat: WEBCHAT_ENABLED=false offers no page, no session and no stream", "[integration][gateway][webchat]") {
    testing::Stack stack("webchat-off");
    gateway::test::InProcess gw(stack, {{"WEBCHAT_ENABLED", "false"}});
    for (const char* path : {"/", "/static/chat.js", "/chat/session", "/chat/events"}) {
        auto r = gw.client->get(path);
        REQUIRE(r.ok());
        INFO(path);
        require_error(*r, 404, "not_found");
        CHECK(r->header("set-cookie").empty());
    }
    auto post =
        gw.client->request("POST", "/chat/messages", R"({"id":"m1","text":"hi"})", {{"Content-Type", "application/json"}});
    REQUIRE(post.ok());
    require_error(*post, 404, "not_found");
    CHECK(stack.count_all() == 0);
}

TEST_CASE("web chat: /chat/deltas carries the live pieces of the browser's own session, a snapshot first mid-answer",
          "[integration][gateway][webchat]") {
    testing::Stack stack{"webdeltas", {{"ENGRAM_API_TOKEN", "t0k"}}};
    gateway::test::InProcess gw{
        stack,
        {{"ENGRAM_API_TOKEN", "t0k"}, {"WEBCHAT_SECRET", "a-test-secret-of-enough-length"}, {"NATS_URL", stack.nats().url()}}};
    auto r = gw.client->get("/");
    REQUIRE(r.ok());
    auto sc = r->header("set-cookie");
    const std::string cookie = sc.substr(12, sc.find(';') - 12);
    const std::string session = "session:web:" + cookie.substr(0, cookie.find('.'));

    nats::ConnectOptions nco;
    nco.url = stack.nats().url();
    auto nc = nats::Connection::connect(nco);
    REQUIRE(nc.ok());
    auto publish = [&](const std::string& s, const json& m) {
        std::string subject = "engram.deltas.";
        for (char ch : s) subject.push_back(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' ? ch : '_');
        REQUIRE((*nc)->publish(subject, m.dump()).ok());
    };
    auto piece = [&](int seq, json more) {
        json m = {{"session_id", session}, {"run_id", "run-1"}, {"iteration", 1}, {"seq", seq}};
        for (auto& [k, v] : more.items()) m[k] = v;
        return m;
    };

    struct Seen {
        std::mutex mu;
        std::vector<std::pair<std::string, json>> events;
        std::size_t size() {
            std::lock_guard lk(mu);
            return events.size();
        }
    };
    auto reader = [&](Seen& seen, std::atomic<bool>& stop) {
        http::Client c(gw.app->url());
        auto res = c.sse(
            "/chat/deltas", {{"Cookie", "engram_chat=" + cookie}},
            [&](const std::string&, const std::string& event, const std::string& data) {
                std::lock_guard lk(seen.mu);
                seen.events.emplace_back(event, json::parse(data));
                return !stop.load() && !(event == "delta" && seen.events.back().second.value("end", false));
            },
            std::chrono::milliseconds(10000));
        CHECK(res.ok());
    };

    Seen first;
    std::atomic<bool> stop{false};
    std::thread t1([&] { reader(first, stop); });
    // The hub subscribes in the background: publish until the stream has seen one.
    REQUIRE(testing::eventually(
        [&] {
            publish(session, piece(1, {{"restart", true}}));
            return first.size() > 0;
        },
        std::chrono::seconds(10)));
    publish(session, piece(2, {{"content", "Hel"}}));
    publish("session:web:someone-else",
            {{"session_id", "session:web:someone-else"}, {"run_id", "x"}, {"iteration", 1}, {"content", "not yours"}});
    REQUIRE((*nc)->publish("engram.deltas.x", "not json").ok());
    publish(session, piece(3, {{"content", "lo"},
                               {"tool_calls", {{{"index", 0}, {"id", "c1"}, {"name", "remember"}, {"arguments", "{\"te"}}}}}));
    REQUIRE(testing::eventually([&] { return first.size() >= 3; }, std::chrono::seconds(5)));

    // A browser that connects now starts from what has been written so far.
    Seen second;
    std::atomic<bool> stop2{false};
    std::thread t2([&] { reader(second, stop2); });
    REQUIRE(testing::eventually([&] { return second.size() >= 1; }, std::chrono::seconds(5)));
    publish(session, piece(4, {{"tool_calls", {{{"index", 0}, {"arguments", "xt\":\"tea\"}"}}}}, {"end", true}}));
    t1.join();
    t2.join();

    // The hub may already hold piece 1 when the first reader connects (an earlier publish of the
    // loop above reached it first): then that reader rightly starts from a snapshot of it.
    std::string content, args;
    for (std::size_t i = 0; i < first.events.size(); ++i) {
        auto& [event, d] = first.events[i];
        CHECK((event == "delta" || (i == 0 && event == "snapshot")));
        CHECK(d["run_id"] == "run-1");
        CHECK_FALSE(d.contains("session_id"));
        if (d.contains("content")) content += d["content"].get<std::string>();
        if (d.contains("tool_calls") && !d["tool_calls"].empty()) args += d["tool_calls"][0].value("arguments", "");
    }
    CHECK(content == "Hello");
    CHECK(args == "{\"text\":\"tea\"}");
    REQUIRE(second.events.size() == 2);
    CHECK(second.events[0].first == "snapshot");
    CHECK(second.events[0].second["content"] == "Hello");
    CHECK(second.events[0].second["tool_calls"][0]["name"] == "remember");
    CHECK(second.events[0].second["tool_calls"][0]["arguments"] == "{\"te");
    CHECK(second.events[1].first == "delta");
    CHECK(second.events[1].second["end"] == true);

    // A flood is cut to the stream's budget; once there is room again, a snapshot catches it up.
    Seen flooded;
    std::atomic<bool> stop3{false};
    std::thread t3([&] { reader(flooded, stop3); });
    REQUIRE(testing::eventually(
        [&] {
            publish(session, piece(1, {{"run_id", "run-2"}, {"restart", true}}));
            return flooded.size() > 0;
        },
        std::chrono::seconds(10)));
    const std::string big(60000, 'x');
    for (int i = 0; i < 30; ++i) publish(session, piece(2 + i, {{"run_id", "run-2"}, {"content", big}}));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::size_t bytes = 0;
    {
        std::lock_guard lk(flooded.mu);
        for (auto& [event, d] : flooded.events) bytes += d.dump().size();
    }
    CHECK(bytes < 30 * big.size() / 2);  // 1.8 MB published, at most 512 KiB + 256 KiB/s let through
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    publish(session, piece(40, {{"run_id", "run-2"}, {"content", "!"}, {"end", true}}));
    REQUIRE(testing::eventually(
        [&] {
            std::lock_guard lk(flooded.mu);
            // Not the first snapshot: the stream may have opened on one of run-2's first piece.
            for (auto& [event, d] : flooded.events)
                if (event == "snapshot" && d.value("truncated", false) && d["content"].get<std::string>().size() == 64 << 10)
                    return true;
            return false;
        },
        std::chrono::seconds(5)));
    stop3 = true;
    publish(session, piece(41, {{"run_id", "run-3"}, {"content", "bye"}}));
    t3.join();

    // Without a cookie: 401; without NATS: 204, so that the page's EventSource does not retry.
    auto anon = gw.client->get("/chat/deltas");
    REQUIRE(anon.ok());
    CHECK(anon->status == 401);
    gateway::test::InProcess quiet{stack, {{"ENGRAM_API_TOKEN", "t0k"}, {"WEBCHAT_SECRET", "a-test-secret-of-enough-length"}}};
    auto off = quiet.client->get("/chat/deltas", {{"Cookie", "engram_chat=" + cookie}});
    REQUIRE(off.ok());
    CHECK(off->status == 204);
}
