// The memory processor against the real event store binary, PostgreSQL and nats-server.
#include "memory_processor.h"

#include "engram/core/uuid.h"
#include "engram/http/client.h"
#include "engram/nats/nats.h"
#include "engram/projections/projections.h"
#include "engram/testing/testing.h"
#include "fake_openai.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <random>
#include <set>
#include <thread>

using namespace engram;
using nlohmann::json;

namespace {

struct Stack : testing::Stack {
    http::Client client{url()};

    Stack() : testing::Stack("memproc") {}
    std::map<std::string, std::string> env() const {
        return {{"DATABASE_URL", db()}, {"NATS_URL", nats().url()}, {"EVENT_STORE_URL", url()}, {"LOG_LEVEL", "warn"}};
    }
    void append(const json& e) {
        auto r = client.post_json("/events", e);
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
    }
    std::int64_t head() { return client.get("/events?after=0&limit=1000")->json()["next_after"].get<std::int64_t>(); }
    // The processor has applied everything: every instance's position in projection_state is the
    // position of its aggregate's last folded event.
    json persisted(const std::string& name, const std::string& id) {
        auto r = client.get("/projections/" + name + "/" + http::url_encode(id));
        return r.ok() && r->status == 200 ? r->json() : json();
    }
};

std::unique_ptr<testing::Process> start_processor(Stack& s, int n) {
    auto env = s.env();
    env["MEMORY_PROCESSOR_LISTEN"] = "127.0.0.1:0";
    return std::make_unique<testing::Process>(
        std::vector<std::string>{testing::build_dir() + "/memory-processor/engram-memory-processor"}, env,
        s.dir() + "/proc-" + std::to_string(n) + ".log");
}

json random_event(std::mt19937& rng, const std::vector<std::string>& sessions, const std::vector<std::string>& users, int i) {
    auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
    switch (rng() % 6) {
        case 0: {
            auto s = pick(sessions);
            return {
                {"type", "MessageReceived"},
                {"aggregate_id", s},
                {"data", {{"channel", "web"}, {"text", "hello " + std::to_string(i)}, {"user_id", "web:u"}, {"session_id", s}}}};
        }
        case 1: {
            auto s = pick(sessions);
            return {{"type", "MessageGenerated"},
                    {"aggregate_id", s},
                    {"data", {{"channel", "web"}, {"text", "answer " + std::to_string(i)}}}};
        }
        case 2: {
            auto s = pick(sessions);
            return {{"type", "ThinkingGenerated"}, {"aggregate_id", s}, {"data", {{"text", "hmm " + std::to_string(i)}}}};
        }
        default: {
            auto u = pick(users);
            return {{"type", "MemoryStored"},
                    {"aggregate_id", "user:" + u},
                    {"data",
                     {{"user_id", u},
                      {"text", "fact number " + std::to_string(i) + " about " + u},
                      {"importance", double(rng() % 10) / 10.0}}}};
        }
    }
}

// Persisted state == a fold from scratch (GET ?as_of=head) for every instance.
void check_projections(Stack& s, const std::vector<std::string>& sessions, const std::vector<std::string>& users) {
    auto head = s.head();
    for (const auto& [name, ids] : std::vector<std::pair<std::string, std::vector<std::string>>>{
             {"conversation", sessions}, {"fast_memory", [&] {
                                              std::vector<std::string> v;
                                              for (auto& u : users) v.push_back("user:" + u);
                                              return v;
                                          }()}}) {
        for (const auto& id : ids) {
            INFO(name << "/" << id);
            auto folded =
                s.client.get("/projections/" + name + "/" + http::url_encode(id) + "?as_of=" + std::to_string(head))->json();
            if (folded["position"] == 0) continue;  // no event for this instance
            // Caught up (the processor may have moved on: its own FastMemoryUpdated events come later).
            REQUIRE(testing::eventually(
                [&] {
                    auto p = s.persisted(name, id);
                    return p.contains("position") && p["position"].get<std::int64_t>() >= folded["position"].get<std::int64_t>();
                },
                std::chrono::seconds(20)));
            auto persisted = s.persisted(name, id);
            auto at = s.client
                          .get("/projections/" + name + "/" + http::url_encode(id) +
                               "?as_of=" + std::to_string(persisted["position"].get<std::int64_t>()))
                          ->json();
            CHECK(persisted["state"] == at["state"]);
        }
    }
}

}  // namespace

TEST_CASE("projections kept live equal a fold from scratch and as_of", "[integration][memory-processor]") {
    Stack s;
    auto proc = start_processor(s, 1);
    std::mt19937 rng(7);
    std::vector<std::string> sessions = {"session:web:a", "session:web:b", "session:telegram:c"};
    std::vector<std::string> users = {"alice", "bob"};
    for (int i = 0; i < 150; ++i) s.append(random_event(rng, sessions, users, i));
    check_projections(s, sessions, users);
    // as_of a past position is the fold of that prefix.
    auto mid = s.head() / 2;
    auto past = s.client.get("/projections/conversation/session:web:a?as_of=" + std::to_string(mid))->json();
    CHECK(past["position"].get<std::int64_t>() <= mid);
}

TEST_CASE("kill -9 mid-stream: projections equal a rebuild and FastMemoryUpdated is not duplicated",
          "[integration][memory-processor][fault]") {
    Stack s;
    auto proc = start_processor(s, 1);
    std::mt19937 rng(11);
    std::vector<std::string> sessions = {"session:web:k1", "session:web:k2"};
    std::vector<std::string> users = {"carol", "dave", "erin"};
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 60; ++i) s.append(random_event(rng, sessions, users, round * 100 + i));
        std::this_thread::sleep_for(std::chrono::milliseconds(150 * (round + 1)));
        proc->kill9();
        proc = start_processor(s, round + 2);
    }
    check_projections(s, sessions, users);
    // One FastMemoryUpdated per causing event at most.
    pqxx::connection c(s.db());
    pqxx::nontransaction tx(c);
    auto dup = tx.exec(
        "SELECT metadata->>'causation_id', count(*) FROM events WHERE type = 'FastMemoryUpdated' "
        "GROUP BY 1 HAVING count(*) > 1");
    CHECK(dup.empty());
    CHECK(tx.exec("SELECT count(*) FROM events WHERE type = 'FastMemoryUpdated'")[0][0].as<int>() > 0);
}

TEST_CASE("memory.search finds stored memories over NATS request/reply", "[integration][memory-processor]") {
    Stack s;
    auto proc = start_processor(s, 1);
    for (auto text : {"My favourite colour is green", "I have a dog called Rex", "Dentist on Friday at 10"})
        s.append({{"type", "MemoryStored"}, {"aggregate_id", "user:frank"}, {"data", {{"user_id", "frank"}, {"text", text}}}});
    s.append({{"type", "MemoryStored"},
              {"aggregate_id", "user:gina"},
              {"data", {{"user_id", "gina"}, {"text", "Gina's dog is called Bo"}}}});
    nats::ConnectOptions o;
    o.url = s.nats().url();
    auto nc = nats::Connection::connect(o);
    REQUIRE(nc.ok());
    json res;
    REQUIRE(testing::eventually(
        [&] {
            auto r =
                (*nc)->request("memory.search", json{{"user_id", "frank"}, {"query", "dog"}}.dump(), std::chrono::seconds(2));
            if (!r.ok()) return false;
            res = json::parse(r->data);
            return res.contains("results") && res["results"].size() >= 1;
        },
        std::chrono::seconds(20)));
    CHECK(res["results"][0]["text"] == "I have a dog called Rex");
    for (auto& h : res["results"]) CHECK(h["text"].get<std::string>().find("Gina") == std::string::npos);
    auto like = (*nc)->request("memory.search", json{{"user_id", "user:frank"}, {"query", "which colours do I like"}}.dump(),
                               std::chrono::seconds(2));
    REQUIRE(like.ok());
    CHECK(json::parse(like->data)["results"][0]["text"] == "My favourite colour is green");
    auto bad = (*nc)->request("memory.search", "{\"query\": 1}", std::chrono::seconds(2));
    REQUIRE(bad.ok());
    CHECK(json::parse(bad->data)["error"] == "invalid_request");
    // Hostile requests from anyone on the bus: an answer each, and the service goes on answering.
    struct Case {
        std::string body, detail;
    };
    for (const auto& c :
         std::vector<Case>{{std::string(100000, '[') + std::string(100000, ']'), "the request has nesting deeper than 64 levels"},
                           {R"({"user_id":"frank","query":"dog","limit":1e400})", "the request has a number out of range"},
                           {R"({"user_id":"frank","query":"d\u0000g"})", "without U+0000"},
                           {"{\"user_id\":\"frank\",\"query\":\"\xff\"}", "not valid JSON"}}) {
        auto r = (*nc)->request("memory.search", c.body, std::chrono::seconds(2));
        REQUIRE(r.ok());
        auto j = json::parse(r->data);
        INFO(r->data);
        CHECK(j["error"] == "invalid_request");
        CHECK(j["detail"].get<std::string>().find(c.detail) != std::string::npos);
    }
    auto still = (*nc)->request("memory.search", json{{"user_id", "frank"}, {"query", "dog"}}.dump(), std::chrono::seconds(2));
    REQUIRE(still.ok());
    CHECK(json::parse(still->data)["results"][0]["text"] == "I have a dog called Rex");
}

TEST_CASE("a rebuild during live traffic: the processor continues without gap or double-apply",
          "[integration][memory-processor][rebuild]") {
    Stack s;
    auto proc = start_processor(s, 1);
    std::mt19937 rng(3);
    std::vector<std::string> sessions = {"session:web:r1", "session:web:r2", "session:web:r3"};
    std::vector<std::string> users = {"hal", "ivy"};
    for (int i = 0; i < 60; ++i) s.append(random_event(rng, sessions, users, i));
    std::atomic<bool> done{false};
    std::thread writer([&] {
        http::Client c(s.url());
        std::mt19937 wrng(5);
        for (int i = 0; i < 120; ++i) c.post_json("/events", random_event(wrng, sessions, users, 1000 + i));
        done = true;
    });
    for (const char* name : {"conversation", "fast_memory", "conversation"}) {
        testing::Process cli({testing::build_dir() + "/interfaces/cli/engram", "projections", "rebuild", name},
                             {{"EVENT_STORE_URL", s.url()}, {"DATABASE_URL", s.db()}}, s.dir() + "/rebuild-" + name + ".log");
        INFO(cli.log());
        CHECK(cli.wait() == 0);
    }
    writer.join();
    check_projections(s, sessions, users);
}

TEST_CASE("an event arriving after a hole in its aggregate's versions is folded after the missing ones",
          "[integration][memory-processor]") {
    Stack s;
    auto proc = start_processor(s, 1);
    const std::string sess = "session:web:hole";
    std::vector<std::int64_t> positions;
    for (int i = 0; i < 10; ++i) {
        auto r = s.client.post_json(
            "/events",
            {{"type", "MessageReceived"},
             {"aggregate_id", sess},
             {"data", {{"channel", "web"}, {"text", "m" + std::to_string(i)}, {"user_id", "u"}, {"session_id", sess}}}});
        REQUIRE(r->status == 201);
        positions.push_back(r->json()["events"][0]["position"].get<std::int64_t>());
    }
    REQUIRE(testing::eventually([&] { return s.persisted("conversation", sess)["position"] == positions.back(); }));
    proc->kill9();
    // Wind the row back to version 5, as if events 6..10 had not been applied (a late redelivery).
    auto at5 = s.client.get("/projections/conversation/" + sess + "?as_of=" + std::to_string(positions[4]))->json();
    {
        pqxx::connection c(s.db());
        pqxx::work tx(c);
        tx.exec("UPDATE projection_state SET state = " + tx.quote(at5["state"].dump()) + ", position = " +
                std::to_string(positions[4]) + ", version = 5 WHERE name = 'conversation' AND id = " + tx.quote(sess));
        tx.commit();
    }
    proc = start_processor(s, 2);
    auto r = s.client.post_json(
        "/events", {{"type", "MessageGenerated"}, {"aggregate_id", sess}, {"data", {{"channel", "web"}, {"text", "answer"}}}});
    auto last = r->json()["events"][0]["position"].get<std::int64_t>();
    REQUIRE(testing::eventually([&] { return s.persisted("conversation", sess)["position"] == last; }));
    auto persisted = s.persisted("conversation", sess);
    CHECK(persisted["state"]["messages"].size() == 11);
    CHECK(persisted["state"] ==
          s.client.get("/projections/conversation/" + sess + "?as_of=" + std::to_string(last))->json()["state"]);
}

TEST_CASE("a lease taken over while a memory is embedded: the old owner's index transaction is fenced",
          "[integration][memory-processor][fencing]") {
    Stack s;
    fakes::FakeOpenAI fake;
    fake.delay_embeddings(std::chrono::milliseconds(3000));
    auto env = s.env();
    env["MEMORY_PROCESSOR_LISTEN"] = "127.0.0.1:0";
    env["MEMORY_PROCESSOR_LEASE_TTL_MS"] = "3000";
    env["LLM_BASE_URL"] = fake.base_url();
    env["EMBEDDINGS_MODEL"] = "fake-embedding";
    testing::Process proc({testing::build_dir() + "/memory-processor/engram-memory-processor"}, env, s.dir() + "/proc-1.log");
    const std::string user = "user:zed";
    const int partition = events::partition_of(user, events::kDefaultPartitions);
    auto db = [&](const std::string& sql) {
        pqxx::connection c(s.db());
        pqxx::work tx(c);
        auto r = tx.exec(sql);
        tx.commit();
        return r;
    };
    auto indexed = [&](const std::string& id) {
        return db("SELECT count(*) FROM memory_index WHERE memory_id = '" + id + "'")[0][0].as<int>();
    };

    auto id = Uuid::v4().str();
    s.append({{"id", id},
              {"type", "MemoryStored"},
              {"aggregate_id", user},
              {"data", {{"user_id", "zed"}, {"text", "zed drinks green tea"}}}});
    // The projection is committed, the embedding is on its way: another instance takes the lease now.
    REQUIRE(testing::eventually([&] { return !fake.embedding_requests().empty(); }, std::chrono::seconds(20)));
    auto taken =
        db("UPDATE processor_leases SET owner = gen_random_uuid(), epoch = epoch + 1, expires_at = now() + interval '1 hour' "
           "WHERE processor = 'memory-processor' AND partition = " +
           std::to_string(partition) + " RETURNING epoch");
    REQUIRE(taken.size() == 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(4000));  // the embedding answered meanwhile
    INFO(testing::tail_file(proc.log_path()));
    CHECK(indexed(id) == 0);

    // The lease comes free: this instance claims it again and indexes the memory once.
    fake.delay_embeddings(std::chrono::milliseconds(0));
    db("UPDATE processor_leases SET owner = NULL, expires_at = now() WHERE processor = 'memory-processor' AND partition = " +
       std::to_string(partition));
    REQUIRE(testing::eventually([&] { return indexed(id) == 1; }, std::chrono::seconds(20)));
    auto fast = s.persisted("fast_memory", user);
    CHECK(fast["state"].dump().find("green tea") != std::string::npos);
}
