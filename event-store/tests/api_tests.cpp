#include "fixture.h"
#include "engram/http/url.h"

#include <pqxx/pqxx>

#include <set>
#include <thread>

using namespace engram;
using engram::test::StoreFixture;
using nlohmann::json;

namespace {

json msg(const std::string& agg, const std::string& text = "hello") {
    return {{"type", "MessageReceived"},
            {"aggregate_id", agg},
            {"data", {{"channel", "web"}, {"text", text}, {"user_id", "u1"}, {"session_id", agg}}},
            {"metadata", {{"source", "test"}, {"correlation_id", "c1"}}}};
}

json custom(const std::string& agg, int n = 0) {
    return {{"type", "SomethingHappened"}, {"aggregate_id", agg}, {"data", {{"n", n}}}};
}

void require_error(const http::ClientResponse& r, int status, const std::string& code, const std::string& detail_part = "") {
    INFO(r.body);
    REQUIRE(r.status == status);
    auto j = r.json();
    CHECK(j["error"] == code);
    REQUIRE(j["detail"].is_string());
    CHECK_FALSE(j["detail"].get<std::string>().empty());
    if (!detail_part.empty()) CHECK(j["detail"].get<std::string>().find(detail_part) != std::string::npos);
}

}  // namespace

TEST_CASE("a single event is appended and read back", "[integration][store]") {
    StoreFixture f;
    auto r = f.post(msg("session:web:a"));
    INFO(r.body);
    REQUIRE(r.status == 201);
    auto out = r.json()["events"];
    REQUIRE(out.size() == 1);
    CHECK(out[0]["position"] == 1);
    CHECK(out[0]["aggregate_version"] == 1);
    auto ts = out[0]["timestamp"].get<std::string>();
    CHECK(ts.size() == 24);
    CHECK(ts.back() == 'Z');
    auto id = out[0]["id"].get<std::string>();
    CHECK(Uuid::parse(id));

    auto g = f.get("/events/" + id);
    REQUIRE(g.status == 200);
    auto ev = g.json();
    CHECK(ev["id"] == id);
    CHECK(ev["type"] == "MessageReceived");
    CHECK(ev["aggregate_id"] == "session:web:a");
    CHECK(ev["aggregate_version"] == 1);
    CHECK(ev["position"] == 1);
    CHECK(ev["timestamp"] == ts);
    CHECK(ev["data"]["text"] == "hello");
    CHECK(ev["metadata"]["correlation_id"] == "c1");

    require_error(f.get("/events/" + Uuid::v4().str()), 404, "not_found");
    require_error(f.get("/events/not-a-uuid"), 404, "not_found");
}

TEST_CASE("quotes, backslashes and SQL in ids and data are stored as sent", "[integration][store]") {
    // The insert writes its own string literals: each of these must come back byte for byte.
    StoreFixture f;
    const std::vector<std::string> nasty = {"it's",  "''",    "\\'",           "\\",    "'); DROP TABLE events; --",
                                            "a\\nb", "\"'\"", "ü ∑ 🙂 '", "$$x$$", "E'\\x41'"};
    for (std::size_t i = 0; i < nasty.size(); ++i) {
        const std::string agg = "agg:" + nasty[i];
        json e = {{"type", "Custom"},
                  {"aggregate_id", agg},
                  {"data", {{nasty[i], nasty[i]}, {"list", {nasty[i], 1}}}},
                  {"metadata", {{"source", nasty[i]}}}};
        // Two events go in as INSERT literals, a group of 40 with COPY.
        auto r = f.post({{"aggregate_id", agg}, {"events", {e, e}}});
        INFO(nasty[i] << ": " << r.body);
        REQUIRE(r.status == 201);
        REQUIRE(f.post({{"aggregate_id", agg}, {"events", json(std::vector<json>(40, e))}}).status == 201);
        auto back = f.get("/aggregates/" + http::url_encode(agg) + "/events?limit=100").json()["events"];
        REQUIRE(back.size() == 42);
        for (const auto& b : back) {
            CHECK(b["aggregate_id"] == agg);
            CHECK(b["data"] == e["data"]);
            CHECK(b["metadata"] == e["metadata"]);
        }
    }
    CHECK(f.count_rows() == 42 * static_cast<std::int64_t>(nasty.size()));
}

TEST_CASE("a batch is stored whole with consecutive positions and versions", "[integration][store]") {
    StoreFixture f;
    REQUIRE(f.post(custom("x")).status == 201);
    auto r = f.post({{"aggregate_id", "agg:1"},
                     {"expected_version", 0},
                     {"events", {custom("agg:1", 1), custom("agg:1", 2), {{"type", "Other"}, {"data", json::object()}}}}});
    INFO(r.body);
    REQUIRE(r.status == 201);
    auto evs = r.json()["events"];
    REQUIRE(evs.size() == 3);
    for (int i = 0; i < 3; ++i) {
        CHECK(evs[i]["position"] == 2 + i);
        CHECK(evs[i]["aggregate_version"] == 1 + i);
    }
    auto a = f.get("/aggregates/agg:1/events").json()["events"];
    REQUIRE(a.size() == 3);
    CHECK(a[2]["type"] == "Other");
    CHECK(a[2]["aggregate_id"] == "agg:1");
    auto from = f.get("/aggregates/agg:1/events?from_version=2&limit=1").json()["events"];
    REQUIRE(from.size() == 1);
    CHECK(from[0]["aggregate_version"] == 2);
    CHECK(f.get("/aggregates/nothing/events").json()["events"].empty());
    require_error(f.get("/aggregates/agg:1/events?from_version=0"), 400, "invalid_parameter", "from_version");
}

TEST_CASE("expected_version guards the aggregate and a conflict writes nothing", "[integration][store]") {
    StoreFixture f;
    auto e = custom("agg:v");
    e["expected_version"] = 0;
    REQUIRE(f.post(e).status == 201);
    auto again = f.post(e);  // the aggregate now holds 1 event
    require_error(again, 409, "version_conflict");
    CHECK(again.json()["expected"] == 0);
    CHECK(again.json()["actual"] == 1);
    auto batch = f.post({{"aggregate_id", "agg:v"}, {"expected_version", 5}, {"events", {custom("agg:v"), custom("agg:v")}}});
    require_error(batch, 409, "version_conflict");
    CHECK(batch.json()["expected"] == 5);
    CHECK(batch.json()["actual"] == 1);
    CHECK(f.count_rows() == 1);
    e["expected_version"] = 1;
    REQUIRE(f.post(e).status == 201);
    CHECK(f.count_rows() == 2);
}

TEST_CASE("a client id makes appends idempotent", "[integration][store]") {
    StoreFixture f;
    auto e = msg("session:web:i");
    auto id = Uuid::v4().str();
    e["id"] = id;
    auto first = f.post(e);
    REQUIRE(first.status == 201);
    auto second = f.post(e);
    INFO(second.body);
    REQUIRE(second.status == 200);
    CHECK(second.json()["events"] == first.json()["events"]);
    // Key order and whitespace do not make content different, nor a number's spelling, nor a key
    // sent twice whose last value is the stored one.
    auto reordered = json::parse(e.dump());
    REQUIRE(f.post_raw(reordered.dump(2)).status == 200);
    auto n = custom("agg:n", 1);
    n["id"] = Uuid::v4().str();
    REQUIRE(f.post(n).status == 201);
    auto spelled = n.dump();
    spelled.replace(spelled.find("\"n\":1"), 5, "\"n\":1.0");
    CHECK(f.post_raw(spelled).status == 200);
    spelled.replace(spelled.find("\"n\":1.0"), 7, "\"n\":7,\"n\":1e0");
    CHECK(f.post_raw(spelled).status == 200);
    // An expected_version that no longer holds does not matter for a retry of a stored event.
    e["expected_version"] = 0;
    REQUIRE(f.post(e).status == 200);
    e.erase("expected_version");

    auto changed = e;
    changed["data"]["text"] = "different";
    require_error(f.post(changed), 409, "id_conflict", id);
    auto moved = e;
    moved["aggregate_id"] = "session:web:other";
    require_error(f.post(moved), 409, "id_conflict");
    // A batch that is only partly stored already is a conflict, not a partial write.
    auto fresh = msg("session:web:i");
    fresh["id"] = Uuid::v4().str();
    require_error(f.post({{"aggregate_id", "session:web:i"}, {"events", {e, fresh}}}), 409, "id_conflict");
    CHECK(f.count_rows() == 2);
}

TEST_CASE("bad input is rejected with a clear 400 and nothing is written", "[integration][store]") {
    StoreFixture f;
    struct Case {
        std::string name, body, code, detail;
    };
    auto big_agg = std::string(300, 'a');
    std::vector<Case> cases = {
        {"invalid json", "{\"type\": \"X\",", "invalid_json", "JSON"},
        {"not an object", "[1,2]", "invalid_event", "object"},
        {"missing type", R"({"aggregate_id":"a","data":{}})", "invalid_event", "type"},
        {"type not a string", R"({"type":5,"aggregate_id":"a"})", "invalid_event", "type"},
        {"type not PascalCase", R"({"type":"message_received","aggregate_id":"a"})", "invalid_event", "type"},
        {"missing aggregate_id", R"({"type":"X","data":{}})", "invalid_event", "aggregate_id"},
        {"aggregate_id not a string", R"({"type":"X","aggregate_id":7})", "invalid_event", "aggregate_id"},
        {"aggregate_id too long", R"({"type":"X","aggregate_id":")" + big_agg + "\"}", "invalid_event", "aggregate_id"},
        {"data not an object", R"({"type":"X","aggregate_id":"a","data":"hi"})", "invalid_event", "data"},
        {"metadata not an object", R"({"type":"X","aggregate_id":"a","metadata":[1]})", "invalid_event", "metadata"},
        {"id not a uuid", R"({"type":"X","aggregate_id":"a","id":"123"})", "invalid_event", "id"},
        {"expected_version negative", R"({"type":"X","aggregate_id":"a","expected_version":-1})", "invalid_event",
         "expected_version"},
        {"expected_version not integer", R"({"type":"X","aggregate_id":"a","expected_version":"1"})", "invalid_event",
         "expected_version"},
        {"schema violation", R"({"type":"MessageReceived","aggregate_id":"a","data":{"text":5}})", "schema_violation",
         "MessageReceived"},
        {"batch without aggregate", R"({"events":[{"type":"X"}]})", "invalid_event", "aggregate_id"},
        {"batch empty", R"({"aggregate_id":"a","events":[]})", "invalid_event", "events"},
        {"batch of two aggregates", R"({"aggregate_id":"a","events":[{"type":"X"},{"type":"X","aggregate_id":"b"}]})",
         "invalid_event", "events[1]"},
        {"batch with a bad event", R"({"aggregate_id":"a","events":[{"type":"X"},{"type":"X","data":1}]})", "invalid_event",
         "events[1]"},
        {"batch with a repeated id",
         R"({"aggregate_id":"a","events":[{"type":"X","id":"6f9619ff-8b86-d011-b42d-00cf4fc964ff"},{"type":"Y","id":"6f9619ff-8b86-d011-b42d-00cf4fc964ff"}]})",
         "invalid_event", "duplicates"},
        {"NUL in a string", R"({"type":"X","aggregate_id":"a","data":{"t":"a\u0000b"}})", "invalid_event", "U+0000"},
    };
    for (const auto& c : cases) {
        SECTION(c.name) {
            auto r = f.post_raw(c.body);
            require_error(r, 400, c.code, c.detail);
            CHECK(f.count_rows() == 0);
        }
    }
}

TEST_CASE("a body over 1 MiB is refused with 413 and nothing is written", "[integration][store]") {
    StoreFixture f;
    json e = custom("agg:big");
    e["data"]["blob"] = std::string(1 << 20, 'x');
    auto r = f.post_raw(e.dump());
    require_error(r, 413, "payload_too_large");
    CHECK(f.count_rows() == 0);
    // Just under the limit is fine.
    e["data"]["blob"] = std::string((1 << 20) - 200, 'x');
    CHECK(f.post_raw(e.dump()).status == 201);
}

TEST_CASE("reads filter by position, type, aggregate and until", "[integration][store]") {
    StoreFixture f;
    for (int i = 0; i < 5; ++i) REQUIRE(f.post(msg("session:web:r1", "m" + std::to_string(i))).status == 201);
    for (int i = 0; i < 5; ++i) REQUIRE(f.post(custom("agg:r2", i)).status == 201);
    REQUIRE(
        f.post({{"type", "MessageGenerated"}, {"aggregate_id", "session:web:r1"}, {"data", {{"text", "hi"}, {"channel", "web"}}}})
            .status == 201);

    auto all = f.get("/events").json();
    CHECK(all["events"].size() == 11);
    CHECK(all["next_after"] == 11);
    auto page = f.get("/events?after=3&limit=4").json();
    REQUIRE(page["events"].size() == 4);
    CHECK(page["events"][0]["position"] == 4);
    CHECK(page["next_after"] == 7);
    auto empty = f.get("/events?after=11").json();
    CHECK(empty["events"].empty());
    CHECK(empty["next_after"] == 11);

    CHECK(f.get("/events?type=Message*").json()["events"].size() == 6);
    CHECK(f.get("/events?type=MessageReceived").json()["events"].size() == 5);
    CHECK(f.get("/events?type=Mess").json()["events"].empty());
    CHECK(f.get("/events?aggregate_id=agg:r2").json()["events"].size() == 5);
    CHECK(f.get("/events?aggregate_id=session%3Aweb%3Ar1&type=MessageGenerated").json()["events"].size() == 1);
    CHECK(f.get("/events?until=4").json()["events"].size() == 4);
    CHECK(f.get("/events?after=2&until=4").json()["events"].size() == 2);

    auto ev5 = f.get("/events?after=4&limit=1").json()["events"][0];
    auto ts = ev5["timestamp"].get<std::string>();
    auto upto = f.get("/events?until=" + http::url_encode(ts)).json()["events"];
    REQUIRE_FALSE(upto.empty());
    for (auto& e : upto) CHECK(e["timestamp"].get<std::string>() <= ts);
    CHECK(f.get("/events?until=2000-01-01T00:00:00Z").json()["events"].empty());

    require_error(f.get("/events?limit=1001"), 400, "invalid_parameter", "limit");
    require_error(f.get("/events?limit=0"), 400, "invalid_parameter", "limit");
    require_error(f.get("/events?after=-1"), 400, "invalid_parameter", "after");
    require_error(f.get("/events?type=*Received"), 400, "invalid_parameter", "type");
    require_error(f.get("/events?until=yesterday"), 400, "invalid_parameter", "until");
    CHECK(f.get("/events?limit=1000").status == 200);
}

TEST_CASE("the bearer token guards every endpoint but liveness", "[integration][store]") {
    StoreFixture f(std::map<std::string, std::string>{{"ENGRAM_API_TOKEN", "s3cret"}});
    require_error(f.post(custom("a")), 401, "unauthorized");
    require_error(f.get("/events"), 401, "unauthorized");
    require_error(f.get("/metrics"), 401, "unauthorized");
    auto wrong = f.client->request("GET", "/events", "", {{"Authorization", "Bearer nope"}});
    require_error(*wrong, 401, "unauthorized");
    CHECK(f.count_rows() == 0);
    CHECK(f.get("/healthz").status == 200);
    auto r = f.client->request("POST", "/events", custom("a").dump(),
                               {{"Authorization", "Bearer s3cret"}, {"Content-Type", "application/json"}});
    CHECK(r->status == 201);
    CHECK(f.get("/events?access_token=s3cret").status == 200);
}

TEST_CASE("health, readiness and metrics", "[integration][store]") {
    StoreFixture f;
    CHECK(f.get("/healthz").json()["status"] == "ok");
    REQUIRE(testing::eventually([&] { return f.get("/readyz").status == 200; }));
    REQUIRE(f.post(custom("m")).status == 201);
    auto m = f.get("/metrics");
    REQUIRE(m.status == 200);
    CHECK(m.body.find("engram_appends_total{result=\"created\"} 1") != std::string::npos);
    CHECK(m.body.find("engram_commit_batch_events_count") != std::string::npos);
    CHECK(m.body.find("engram_log_head_position 1") != std::string::npos);
    require_error(f.get("/nowhere"), 404, "not_found");
    auto del = f.client->request("DELETE", "/events");
    CHECK(del->status == 405);
}

namespace {

// Checks the log's invariants straight from PostgreSQL: positions 1..N and versions 1..n.
void check_gap_free(const std::string& db_url, std::int64_t expected_total) {
    pqxx::connection c(db_url);
    pqxx::nontransaction tx(c);
    auto r = tx.exec("SELECT count(*), coalesce(min(position),0), coalesce(max(position),0) FROM events");
    CHECK(r[0][0].as<std::int64_t>() == expected_total);
    CHECK(r[0][2].as<std::int64_t>() == expected_total);
    if (expected_total) CHECK(r[0][1].as<std::int64_t>() == 1);
    auto v = tx.exec("SELECT aggregate_id, count(*), max(aggregate_version), min(aggregate_version) FROM events GROUP BY 1");
    for (const auto& row : v) {
        INFO(row[0].c_str());
        CHECK(row[1].as<std::int64_t>() == row[2].as<std::int64_t>());
        CHECK(row[3].as<std::int64_t>() == 1);
    }
    // Version order equals position order within each aggregate.
    auto bad = tx.exec(
        "SELECT count(*) FROM (SELECT aggregate_version, lag(aggregate_version) OVER (PARTITION BY aggregate_id ORDER BY "
        "position) AS prev FROM events) t WHERE prev IS NOT NULL AND aggregate_version <> prev + 1");
    CHECK(bad[0][0].as<std::int64_t>() == 0);
}

}  // namespace

TEST_CASE("concurrent appends leave positions and versions without gaps", "[integration][store]") {
    StoreFixture f;
    const int threads = 16, per_thread = 150;
    auto aggregates = GENERATE(3, 1000);
    std::atomic<int> created{0}, failed{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
            http::Client c(f.app->url());
            for (int i = 0; i < per_thread; ++i) {
                auto agg = "agg:" + std::to_string((t * per_thread + i) % aggregates);
                json body =
                    (i % 5 == 0) ? json{{"aggregate_id", agg}, {"events", {custom(agg, i), custom(agg, i + 1)}}} : custom(agg, i);
                auto r = c.post_json("/events", body);
                (r.ok() && r->status == 201 ? created : failed)++;
            }
        });
    for (auto& t : ts) t.join();
    CHECK(failed == 0);
    CHECK(created == threads * per_thread);
    check_gap_free(f.db_url, threads * per_thread + threads * (per_thread / 5));
}

TEST_CASE("a large batch sent again with its ids is replayed, one with a changed event is a conflict", "[integration][store]") {
    // A group this large is written with COPY: the database's refusal of a stored id must lead
    // to the same answers as with an INSERT.
    StoreFixture f;
    json events = json::array();
    for (int i = 0; i < 100; ++i) {
        auto e = custom("agg:big", i);
        e["id"] = Uuid::v4().str();
        events.push_back(e);
    }
    const json body = {{"aggregate_id", "agg:big"}, {"events", events}};
    auto first = f.post(body);
    REQUIRE(first.status == 201);
    auto again = f.post(body);
    INFO(again.body);
    REQUIRE(again.status == 200);
    CHECK(again.json()["events"] == first.json()["events"]);
    auto changed = body;
    changed["events"][57]["data"]["n"] = -1;
    require_error(f.post(changed), 409, "id_conflict", changed["events"][57]["id"].get<std::string>());
    CHECK(f.count_rows() == 100);
    check_gap_free(f.db_url, 100);
}

TEST_CASE("concurrent retries of one event id store it once", "[integration][store]") {
    StoreFixture f;
    for (int round = 0; round < 20; ++round) {
        auto e = custom("agg:retry", round);
        e["id"] = Uuid::v4().str();
        std::vector<std::thread> ts;
        std::mutex mu;
        std::set<std::int64_t> positions;
        std::atomic<int> created{0}, replayed{0};
        for (int t = 0; t < 8; ++t)
            ts.emplace_back([&] {
                http::Client c(f.app->url());
                auto r = c.post_json("/events", e);
                REQUIRE(r.ok());
                if (r->status == 201) created++;
                if (r->status == 200) replayed++;
                std::lock_guard lk(mu);
                positions.insert(r->json()["events"][0]["position"].get<std::int64_t>());
            });
        for (auto& t : ts) t.join();
        CHECK(created == 1);
        CHECK(replayed == 7);
        CHECK(positions.size() == 1);
    }
    check_gap_free(f.db_url, 20);
}

TEST_CASE("concurrent appends of one id with two contents: one is stored, its retries replay, the other is a conflict",
          "[integration][store]") {
    // Racers of one group commit meet in the writer's memory, not in the database: both the
    // replay and the conflict must be decided there too.
    StoreFixture f;
    for (int round = 0; round < 20; ++round) {
        auto a = custom("agg:two", round);
        a["id"] = Uuid::v4().str();
        auto b = a;
        b["data"]["n"] = -1;
        std::vector<std::thread> ts;
        std::atomic<int> status[2][3] = {};  // [content][201, 200, 409]
        for (int t = 0; t < 8; ++t)
            ts.emplace_back([&, t] {
                http::Client c(f.app->url());
                auto r = c.post_json("/events", t % 2 ? b : a);
                REQUIRE(r.ok());
                int k = r->status == 201 ? 0 : r->status == 200 ? 1 : r->status == 409 ? 2 : -1;
                REQUIRE(k >= 0);
                status[t % 2][k]++;
            });
        for (auto& t : ts) t.join();
        int winner = status[0][0] == 1 ? 0 : 1;
        CHECK(status[winner][0] == 1);
        CHECK(status[winner][1] == 3);
        CHECK(status[1 - winner][0] == 0);
        CHECK(status[1 - winner][1] == 0);
        CHECK(status[1 - winner][2] == 4);
        auto stored = f.get("/aggregates/agg:two/events?from_version=" + std::to_string(round + 1) + "&limit=1").json()["events"];
        REQUIRE(stored.size() == 1);
        CHECK(stored[0]["data"] == (winner ? b : a)["data"]);
    }
    CHECK(f.count_rows() == 20);
}

TEST_CASE("the store answers 503 while PostgreSQL is down and recovers by itself", "[integration][store][restart]") {
    StoreFixture f;
    REQUIRE(f.post(custom("agg:pg")).status == 201);
    auto& pg = testing::Postgres::shared();
    pg.stop();
    auto during = f.post(custom("agg:pg"));
    require_error(during, 503, "unavailable");
    require_error(f.get("/events"), 503, "unavailable");
    CHECK(f.get("/readyz").status == 503);
    CHECK(f.get("/healthz").status == 200);
    pg.start();
    REQUIRE(testing::eventually([&] { return f.post(custom("agg:pg")).status == 201; }, std::chrono::seconds(20)));
    CHECK(f.get("/events").json()["events"].size() >= 2);
    REQUIRE(testing::eventually([&] { return f.get("/readyz").status == 200; }));
    pqxx::connection c(f.db_url);
    pqxx::nontransaction tx(c);
    auto n = tx.exec("SELECT count(*) FROM events")[0][0].as<std::int64_t>();
    check_gap_free(f.db_url, n);
}

TEST_CASE("the log refuses updates and deletes", "[integration][store]") {
    StoreFixture f;
    REQUIRE(f.post(custom("agg:ro")).status == 201);
    pqxx::connection c(f.db_url);
    {  // and the persisted states are compressed with lz4 (Debian's PostgreSQL has it)
        pqxx::nontransaction q(c);
        CHECK(q.exec("SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'projection_state'::regclass AND "
                     "attname = 'state'")[0][0]
                  .as<std::string>() == "l");
    }
    pqxx::work tx(c);
    CHECK_THROWS(tx.exec("UPDATE events SET type = 'Changed'"));
}

TEST_CASE("projections are folded from the log as of a position or a time", "[integration][store][projections]") {
    StoreFixture f;
    std::vector<std::string> ts;
    for (int i = 0; i < 3; ++i) {
        auto r = f.post(msg("session:web:p", "m" + std::to_string(i)));
        REQUIRE(r.status == 201);
        ts.push_back(r.json()["events"][0]["timestamp"]);
    }
    REQUIRE(f.post(custom("session:web:other")).status == 201);
    REQUIRE(f.post(custom("session:web:p")).status == 201);  // not folded: the position still counts it
    auto at2 = f.get("/projections/conversation/session:web:p?as_of=2");
    INFO(at2.body);
    REQUIRE(at2.status == 200);
    auto j = at2.json();
    CHECK(j["name"] == "conversation");
    CHECK(j["id"] == "session:web:p");
    CHECK(j["position"] == 2);
    CHECK(j["state"]["messages"].size() == 2);
    CHECK(j["state"]["messages"][1]["text"] == "m1");
    auto now = f.get("/projections/conversation/session:web:p?as_of=100").json();
    CHECK(now["state"]["messages"].size() == 3);
    CHECK(now["state"]["position"] == 3);
    CHECK(now["position"] == 5);
    auto by_time = f.get("/projections/conversation/session:web:p?as_of=" + http::url_encode(ts[0])).json();
    CHECK(by_time["state"]["messages"].size() >= 1);
    CHECK(f.get("/projections/conversation/session:web:p?as_of=2000-01-01T00:00:00Z").json()["position"] == 0);

    require_error(f.get("/projections/nope/x?as_of=1"), 404, "not_found");
    require_error(f.get("/projections/conversation/user:1?as_of=1"), 400, "invalid_parameter");
    require_error(f.get("/projections/conversation/session:web:p?as_of=yesterday"), 400, "invalid_parameter", "as_of");
    // Nothing persisted yet (no memory processor in this test).
    require_error(f.get("/projections/conversation/session:web:p"), 404, "not_found");
}
