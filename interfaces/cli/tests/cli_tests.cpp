// The `engram` CLI against a real event store binary (real PostgreSQL and nats-server): each case runs
// the CLI as a child process and checks its output and exit code.
#include <signal.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <atomic>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "engram/core/json.h"
#include "engram/core/uuid.h"
#include "engram/events/event.h"
#include "engram/http/client.h"
#include "engram/http/url.h"
#include "engram/projections/projections.h"
#include "engram/testing/testing.h"

using nlohmann::json;
namespace t = engram::testing;

namespace {

std::vector<std::string> lines_of(const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);)
        if (!l.empty()) out.push_back(l);
    return out;
}

struct Run {
    int code = -1;
    std::string out;  // stdout and stderr together
};

struct Fixture {
    t::Nats nats;
    std::string db = t::Postgres::shared().create_database();
    std::string dir = t::make_temp_dir("engram-cli");
    std::string url;
    std::unique_ptr<t::Process> store;
    std::unique_ptr<engram::http::Client> client;
    int runs = 0;

    Fixture() {
        int port = t::free_port();
        url = "http://127.0.0.1:" + std::to_string(port);
        store = std::make_unique<t::Process>(
            std::vector<std::string>{t::build_dir() + "/event-store/engram-event-store"},
            std::map<std::string, std::string>{{"DATABASE_URL", db},
                                               {"NATS_URL", nats.url()},
                                               {"EVENT_STORE_LISTEN", "127.0.0.1:" + std::to_string(port)},
                                               {"LOG_LEVEL", "warn"}},
            dir + "/store.log");
        client = std::make_unique<engram::http::Client>(url);
        bool ready = t::eventually(
            [&] {
                auto r = client->get("/readyz");
                return r.ok() && r->status == 200;
            },
            std::chrono::seconds(20));
        INFO(store->log());
        REQUIRE(ready);
    }

    std::vector<std::string> argv(std::vector<std::string> args, bool with_db) {
        std::vector<std::string> a{t::build_dir() + "/interfaces/cli/engram", "--url", url};
        if (with_db) {
            a.push_back("--database-url");
            a.push_back(db);
        }
        a.insert(a.end(), args.begin(), args.end());
        return a;
    }

    Run run(std::vector<std::string> args, bool with_db = false) {
        auto log = dir + "/run-" + std::to_string(++runs) + ".log";
        t::Process p(argv(std::move(args), with_db), {{"DATABASE_URL", ""}}, log);
        Run r;
        r.code = p.wait();
        r.out = p.log();
        return r;
    }

    json append(const std::string& type, const std::string& agg, const json& data) {
        auto r = client->post_json("/events", {{"type", type}, {"aggregate_id", agg}, {"data", data}});
        REQUIRE(r.ok());
        INFO(r->body);
        REQUIRE(r->status == 201);
        return r->json()["events"][0];
    }

    std::vector<engram::events::Event> aggregate_events(const std::string& agg) {
        auto r = client->get("/aggregates/" + agg + "/events");
        REQUIRE(r.ok());
        REQUIRE(r->status == 200);
        std::vector<engram::events::Event> out;
        const auto body = r->json();
        for (const auto& j : body["events"]) {
            auto e = engram::events::Event::from_json(j);
            REQUIRE(e.ok());
            out.push_back(*e);
        }
        return out;
    }

    // name/id -> {state, position} as persisted.
    std::map<std::string, std::pair<json, std::int64_t>> rows(const std::string& name) {
        pqxx::connection c(db);
        pqxx::work tx(c);
        std::map<std::string, std::pair<json, std::int64_t>> out;
        for (const auto& r : tx.exec_params("SELECT id, state::text, position FROM projection_state WHERE name = $1", name))
            out[r[0].c_str()] = {json::parse(r[1].c_str()), r[2].as<std::int64_t>()};
        return out;
    }
};

json msg(const std::string& session, const std::string& text) {
    return {{"channel", "web"}, {"text", text}, {"user_id", "u1"}, {"session_id", session}};
}
json answer(const std::string& text) { return {{"channel", "web"}, {"text", text}}; }
json memory(const std::string& user, const std::string& text) { return {{"user_id", user}, {"text", text}}; }

void require_one_line_failure(const Run& r, int code, const std::string& starts_with) {
    INFO(r.out);
    REQUIRE(r.code == code);
    auto ls = lines_of(r.out);
    REQUIRE(ls.size() == 1);
    REQUIRE(ls[0].rfind(starts_with, 0) == 0);
}

}  // namespace

TEST_CASE("append then events get and events tail --json show what was written", "[integration][cli]") {
    Fixture f;
    auto a = f.run({"append", "--type", "MessageReceived", "--aggregate", "session:web:s1", "--data", msg("s1", "hello").dump(),
                    "--metadata", R"({"source":"cli-test"})", "--json"});
    INFO(a.out);
    REQUIRE(a.code == 0);
    auto appended = json::parse(lines_of(a.out).at(0));
    REQUIRE(appended["position"] == 1);
    REQUIRE(appended["aggregate_version"] == 1);
    REQUIRE(appended["created"] == true);
    const std::string id = appended["id"];

    auto id2 = engram::Uuid::v4().str();
    auto b = f.run({"append", "--type", "Custom", "--aggregate", "user:u1", "--id", id2, "--data", R"({"n":2})"});
    INFO(b.out);
    REQUIRE(b.code == 0);
    REQUIRE(b.out.find("appended " + id2 + ": position 2, version 1") != std::string::npos);
    // Idempotent re-send with the same id and content.
    auto b2 = f.run({"append", "--type", "Custom", "--aggregate", "user:u1", "--id", id2, "--data", R"({"n":2})"});
    REQUIRE(b2.code == 0);
    REQUIRE(b2.out.find("already stored " + id2 + ": position 2") != std::string::npos);

    SECTION("events get") {
        auto g = f.run({"events", "get", id, "--json"});
        INFO(g.out);
        REQUIRE(g.code == 0);
        auto e = json::parse(g.out);
        REQUIRE(e["id"] == id);
        REQUIRE(e["type"] == "MessageReceived");
        REQUIRE(e["aggregate_id"] == "session:web:s1");
        REQUIRE(e["data"] == msg("s1", "hello"));
        REQUIRE(e["metadata"]["source"] == "cli-test");
        auto h = f.run({"events", "get", id});
        REQUIRE(h.code == 0);
        REQUIRE(h.out.find("MessageReceived") != std::string::npos);
        REQUIRE(h.out.find("session:web:s1") != std::string::npos);
    }
    SECTION("events tail") {
        auto tl = f.run({"events", "tail", "--json"});
        INFO(tl.out);
        REQUIRE(tl.code == 0);
        auto ls = lines_of(tl.out);
        REQUIRE(ls.size() == 2);
        auto e1 = json::parse(ls[0]), e2 = json::parse(ls[1]);
        REQUIRE(e1["id"] == id);
        REQUIRE(e1["position"] == 1);
        REQUIRE(e1["data"]["text"] == "hello");
        REQUIRE(e2["id"] == id2);
        REQUIRE(e2["data"] == json{{"n", 2}});

        auto filtered = f.run({"events", "tail", "--json", "--type", "Cust*"});
        REQUIRE(filtered.code == 0);
        REQUIRE(lines_of(filtered.out).size() == 1);
        REQUIRE(json::parse(lines_of(filtered.out)[0])["id"] == id2);
        auto by_agg = f.run({"events", "tail", "--json", "--aggregate", "session:web:s1"});
        REQUIRE(lines_of(by_agg.out).size() == 1);
        auto after = f.run({"events", "tail", "--json", "--after", "1"});
        REQUIRE(lines_of(after.out).size() == 1);
        auto limited = f.run({"--json", "events", "tail", "--limit", "1"});
        REQUIRE(lines_of(limited.out).size() == 1);

        auto human = f.run({"events", "tail"});
        INFO(human.out);
        REQUIRE(human.code == 0);
        auto hl = lines_of(human.out);
        REQUIRE(hl.size() == 3);  // header + 2 events
        REQUIRE(hl[1].find("MessageReceived") != std::string::npos);
        REQUIRE(hl[2].find("user:u1") != std::string::npos);
    }
    SECTION("store refusals are one line, exit 1") {
        auto conflict = f.run({"append", "--type", "Custom", "--aggregate", "user:u1", "--expected-version", "0"});
        require_one_line_failure(conflict, 1, "engram: event store answered 409 version_conflict");
        auto bad = f.run({"append", "--type", "MessageReceived", "--aggregate", "session:web:s1", "--data", R"({"text":1})"});
        require_one_line_failure(bad, 1, "engram: event store answered 400 schema_violation");
        auto same_id = f.run({"append", "--type", "Custom", "--aggregate", "user:u1", "--id", id2, "--data", R"({"n":3})"});
        require_one_line_failure(same_id, 1, "engram: event store answered 409 id_conflict");
        // Nothing was written by the refused appends.
        auto tl = f.run({"events", "tail", "--json"});
        REQUIRE(lines_of(tl.out).size() == 2);
    }
}

TEST_CASE("append bounds --data, and events as deep as the store allows are shown", "[integration][cli][json]") {
    Fixture f;
    std::string deep = std::string(1000, '[') + std::string(1000, ']');
    require_one_line_failure(f.run({"append", "--type", "Custom", "--aggregate", "user:d", "--data", "{\"a\":" + deep + "}"}), 2,
                             "engram: bad --data: --data has nesting deeper than 63 levels");
    require_one_line_failure(f.run({"append", "--type", "Custom", "--aggregate", "user:d", "--data", R"({"n":1e400})"}), 2,
                             "engram: bad --data: --data has a number out of range: 1e400");
    require_one_line_failure(f.run({"append", "--type", "Custom", "--aggregate", "user:d", "--metadata", R"({"n":1)"}), 2,
                             "engram: bad --metadata: --metadata is not valid JSON");
    // An event whose data nests as deep as a store body allows: the list answers wrap it two levels
    // further down, and the CLI still reads them.
    json data = json::object();
    for (int i = 1; i < engram::kMaxJsonDepth; ++i) data = json{{"a", std::move(data)}};
    auto stored = f.append("Custom", "user:d", data);
    auto got = f.run({"--json", "events", "get", stored["id"].get<std::string>()});
    INFO(got.out);
    REQUIRE(got.code == 0);
    CHECK(json::parse(got.out)["data"] == data);
    auto tail = f.run({"--json", "events", "tail"});
    INFO(tail.out);
    REQUIRE(tail.code == 0);
    REQUIRE(lines_of(tail.out).size() == 1);
    CHECK(json::parse(lines_of(tail.out)[0])["data"] == data);
}

TEST_CASE("events tail --follow prints new events until SIGINT then exits 0", "[integration][cli]") {
    Fixture f;
    f.append("Custom", "user:f", {{"n", 1}});
    auto log = f.dir + "/follow.log";
    t::Process p(f.argv({"events", "tail", "--follow", "--json", "--type", "Custom"}, false), {}, log);
    REQUIRE(t::eventually([&] { return lines_of(p.log()).size() == 1; }));
    f.append("Other", "user:f", json::object());
    auto e3 = f.append("Custom", "user:f", {{"n", 3}});
    REQUIRE(t::eventually([&] { return lines_of(p.log()).size() == 2; }, std::chrono::seconds(5)));
    auto last = json::parse(lines_of(p.log())[1]);
    REQUIRE(last["id"] == e3["id"]);
    REQUIRE(last["data"]["n"] == 3);
    REQUIRE(p.alive());
    ::kill(p.pid(), SIGINT);
    REQUIRE(p.wait() == 0);
}

TEST_CASE("replay --as-of folds the prefix locally like the store as_of", "[integration][cli]") {
    Fixture f;
    const std::string s = "session:web:r1";
    f.append("MessageReceived", s, msg("r1", "one"));
    f.append("MessageReceived", "session:web:other", msg("other", "noise"));
    f.append("MessageGenerated", s, answer("reply one"));
    auto mid = f.append("MessageReceived", s, msg("r1", "two"));
    f.append("Custom", s, {{"ignored", true}});
    f.append("MessageGenerated", s, answer("reply two"));
    const std::int64_t P = mid["position"];

    const auto* conv = engram::projections::find("conversation");
    REQUIRE(conv);
    auto all = f.aggregate_events(s);
    std::vector<engram::events::Event> prefix;
    for (const auto& e : all)
        if (e.position.value() <= P) prefix.push_back(e);
    REQUIRE(prefix.size() == 3);
    auto expected = engram::projections::fold(*conv, s, prefix);
    auto full = engram::projections::fold(*conv, s, all);
    REQUIRE(expected != full);

    auto r = f.run({"replay", "conversation", s, "--as-of", std::to_string(P), "--json"});
    INFO(r.out);
    REQUIRE(r.code == 0);
    auto out = json::parse(r.out);
    REQUIRE(out["state"] == expected);
    REQUIRE(out["position"] == P);
    REQUIRE(out["events"] == 3);

    // The store's own time travel gives the same view (when it serves /projections).
    auto sr = f.client->get("/projections/conversation/" + engram::http::url_encode(s) + "?as_of=" + std::to_string(P));
    REQUIRE(sr.ok());
    if (sr->status == 200) {
        REQUIRE(sr->json()["state"] == expected);
    } else {
        WARN("the event store does not serve GET /projections (status " << sr->status << "): comparison skipped");
    }

    // By time: the timestamp of the middle event covers at least the prefix.
    auto by_time = f.run({"replay", "conversation", s, "--as-of", std::string(mid["timestamp"]), "--json"});
    REQUIRE(by_time.code == 0);
    REQUIRE(json::parse(by_time.out)["position"].get<std::int64_t>() >= P);

    // Without --as-of: the current view.
    auto now = f.run({"replay", "conversation", s, "--json"});
    REQUIRE(json::parse(now.out)["state"] == full);

    // --steps: one line per event of the aggregate, the ignored type marked.
    auto steps = f.run({"replay", "conversation", s, "--steps"});
    INFO(steps.out);
    REQUIRE(steps.code == 0);
    REQUIRE(steps.out.find("(not folded)") != std::string::npos);
    auto js = f.run({"replay", "conversation", s, "--steps", "--json"});
    auto jsteps = json::parse(js.out)["steps"];
    REQUIRE(jsteps.size() == all.size());
    REQUIRE(jsteps.back()["state"] == full);
    REQUIRE(jsteps[2]["state"] == expected);
}

TEST_CASE("projections rebuild writes the fold from scratch and twice the same", "[integration][cli]") {
    Fixture f;
    for (int i = 0; i < 3; ++i) {
        f.append("MessageReceived", "session:web:a", msg("a", "a" + std::to_string(i)));
        f.append("MessageReceived", "session:web:b", msg("b", "b" + std::to_string(i)));
        f.append("MemoryStored", "user:u1", memory("u1", "likes tea " + std::to_string(i)));
        f.append("Custom", "session:web:a", {{"i", i}});
    }
    f.append("MessageGenerated", "session:web:a", answer("done"));
    {  // a stale row that a rebuild must drop, and another projection's row it must keep
        pqxx::connection c(f.db);
        pqxx::work tx(c);
        tx.exec(
            "CREATE TABLE IF NOT EXISTS projection_state (name text, id text, state jsonb NOT NULL, "
            "position bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, id))");
        tx.exec(
            "INSERT INTO projection_state (name, id, state, position) VALUES "
            "('conversation', 'session:web:ghost', '{}', 99), ('other', 'x', '{}', 1)");
        tx.commit();
    }
    auto r = f.run({"projections", "rebuild", "conversation", "--json"}, true);
    INFO(r.out);
    REQUIRE(r.code == 0);
    auto out = json::parse(lines_of(r.out).back());
    REQUIRE(out["instances"] == 2);
    REQUIRE(out["events"] == 7);  // 3 + 3 MessageReceived, 1 MessageGenerated
    REQUIRE(out["head"] == 13);

    const auto* conv = engram::projections::find("conversation");
    auto rows = f.rows("conversation");
    REQUIRE(rows.size() == 2);
    for (std::string s : {"session:web:a", "session:web:b"}) {
        auto expected = engram::projections::fold(*conv, s, f.aggregate_events(s));
        REQUIRE(rows.at(s).first == expected);
        REQUIRE(rows.at(s).second == expected["position"].get<std::int64_t>());
    }
    REQUIRE(f.rows("other").size() == 1);

    auto again = f.run({"projections", "rebuild", "conversation"}, true);
    INFO(again.out);
    REQUIRE(again.code == 0);
    REQUIRE(again.out.find("rebuilt conversation: 2 instances, 7 events folded") != std::string::npos);
    REQUIRE(f.rows("conversation") == rows);

    auto fm = f.run({"projections", "rebuild", "fast_memory", "--json", "--progress"}, true);
    INFO(fm.out);
    REQUIRE(fm.code == 0);
    auto fm_rows = f.rows("fast_memory");
    REQUIRE(fm_rows.size() == 1);
    REQUIRE(fm_rows.at("user:u1").first ==
            engram::projections::fold(*engram::projections::find("fast_memory"), "user:u1", f.aggregate_events("user:u1")));
    REQUIRE(fm.out.find("13/13 events") != std::string::npos);  // the progress bar, forced

    auto unknown = f.run({"projections", "rebuild", "nope"}, true);
    require_one_line_failure(unknown, 2, "engram: unknown projection 'nope'");
    auto no_db = f.run({"projections", "rebuild", "conversation"});
    require_one_line_failure(no_db, 2, "engram: projections rebuild needs the database");
}

TEST_CASE("parked list and retry", "[integration][cli]") {
    Fixture f;
    auto empty = f.run({"parked", "list", "--json"}, true);  // no table yet
    INFO(empty.out);
    REQUIRE(empty.code == 0);
    REQUIRE(json::parse(empty.out) == json::array());

    auto e1 = engram::Uuid::v4().str(), e2 = engram::Uuid::v4().str();
    {
        pqxx::connection c(f.db);
        pqxx::work tx(c);
        tx.exec(
            "CREATE TABLE processor_parked (processor text, event_id uuid, position bigint, aggregate_id text, "
            "type text, envelope jsonb, error text, attempts int, parked_at timestamptz default now(), "
            "retry_requested boolean default false, PRIMARY KEY (processor, event_id))");
        tx.exec_params(
            "INSERT INTO processor_parked (processor, event_id, position, aggregate_id, type, envelope, error, attempts) "
            "VALUES ('ai', $1, 5, 'session:web:x', 'MessageReceived', '{\"a\":1}', 'LLM said no', 5), "
            "('notification', $2, 7, 'session:web:y', 'MessageGenerated', '{}', 'boom', 3)",
            e1, e2);
        tx.commit();
    }
    auto list = f.run({"parked", "list", "--json"}, true);
    INFO(list.out);
    REQUIRE(list.code == 0);
    auto rows = json::parse(list.out);
    REQUIRE(rows.size() == 2);
    REQUIRE(rows[0]["processor"] == "ai");
    REQUIRE(rows[0]["event_id"] == e1);
    REQUIRE(rows[0]["position"] == 5);
    REQUIRE(rows[0]["error"] == "LLM said no");
    REQUIRE(rows[0]["attempts"] == 5);
    REQUIRE(rows[0]["envelope"] == json{{"a", 1}});
    REQUIRE(rows[0]["retry_requested"] == false);
    auto only = f.run({"parked", "list", "--json", "--processor", "notification"}, true);
    REQUIRE(json::parse(only.out).size() == 1);
    auto human = f.run({"parked", "list"}, true);
    REQUIRE(human.code == 0);
    REQUIRE(human.out.find("LLM said no") != std::string::npos);

    auto retry = f.run({"parked", "retry", e1}, true);
    INFO(retry.out);
    REQUIRE(retry.code == 0);
    auto after = json::parse(f.run({"parked", "list", "--json"}, true).out);
    REQUIRE(after[0]["retry_requested"] == true);
    REQUIRE(after[1]["retry_requested"] == false);

    auto unknown = f.run({"parked", "retry", engram::Uuid::v4().str()}, true);
    require_one_line_failure(unknown, 1, "engram: no parked event");
    auto wrong_proc = f.run({"parked", "retry", e2, "--processor", "ai"}, true);
    require_one_line_failure(wrong_proc, 1, "engram: no parked event");
    auto both = f.run({"parked", "retry"}, true);
    require_one_line_failure(both, 2, "engram: parked retry needs exactly one of");

    auto all = f.run({"parked", "retry", "--all", "--json"}, true);
    REQUIRE(all.code == 0);
    REQUIRE(json::parse(all.out)["retry_requested"] == 2);
    auto done = json::parse(f.run({"parked", "list", "--json"}, true).out);
    REQUIRE(done[1]["retry_requested"] == true);
}

TEST_CASE("failures give one line on stderr and exit 1 and bad arguments exit 2", "[integration][cli]") {
    Fixture f;
    auto id = engram::Uuid::v4().str();
    require_one_line_failure(f.run({"events", "get", id}), 1, "engram: no event " + id);

    // Store unreachable: a port nobody listens on.
    {
        auto log = f.dir + "/unreachable.log";
        t::Process p({t::build_dir() + "/interfaces/cli/engram", "--url", "http://127.0.0.1:" + std::to_string(t::free_port()),
                      "events", "tail"},
                     {}, log);
        Run r{p.wait(), p.log()};
        require_one_line_failure(r, 1, "engram: cannot reach the event store");
    }

    require_one_line_failure(f.run({"events", "tail", "--limit", "0"}), 2, "engram: ");
    require_one_line_failure(f.run({"events", "tail", "--type", "a*b*"}), 2, "engram: bad --type");
    require_one_line_failure(f.run({"events", "get", "not-a-uuid"}), 2, "engram: bad event id");
    require_one_line_failure(f.run({"append", "--aggregate", "user:x"}), 2, "engram: --type is required");
    require_one_line_failure(f.run({"append", "--type", "X", "--aggregate", "user:x", "--data", "[1]"}), 2, "engram: bad --data");
    require_one_line_failure(f.run({"replay", "conversation", "session:web:x", "--as-of", "yesterday"}), 2,
                             "engram: bad --as-of");
    require_one_line_failure(f.run({"replay", "conversation", "user:x"}), 2, "engram: bad id");
    require_one_line_failure(f.run({"replay", "nope", "x"}), 2, "engram: unknown projection");
    require_one_line_failure(f.run({"frobnicate"}), 2, "engram: ");
    require_one_line_failure(f.run({}), 2, "engram: ");

    auto help = f.run({"--help"});
    REQUIRE(help.code == 0);
    for (const char* c :
         {"events tail", "events get", "append", "replay", "projections rebuild", "parked list", "parked retry", "processors"})
        REQUIRE(help.out.find(c) != std::string::npos);
    auto sub = f.run({"replay", "--help"});
    REQUIRE(sub.code == 0);
    REQUIRE(sub.out.find("--as-of") != std::string::npos);
    // Nothing was written by any of it.
    auto tl = f.run({"events", "tail", "--json"});
    REQUIRE(tl.code == 0);
    REQUIRE(lines_of(tl.out).empty());
}

TEST_CASE("engram fork branches a session at a position; replay of the fork composes its origin", "[integration][cli][fork]") {
    Fixture f;
    const std::string s = "session:web:f1";
    f.append("MessageReceived", s, msg(s, "question one"));
    f.append("MessageGenerated", s, answer("answer one"));
    auto q2 = f.append("MessageReceived", s, msg(s, "question two"));
    f.append("MessageGenerated", s, answer("answer two"));
    const std::int64_t P = q2["position"];
    const auto origin_before = f.aggregate_events(s).size();

    // Refused, exit 2 (or 1 for a session the log does not have), one line, nothing written.
    require_one_line_failure(f.run({"fork", s, "--at", "0"}), 2, "engram: 'at' must be a global position >= 1");
    require_one_line_failure(f.run({"fork", "session:web:none", "--at", "3"}), 1, "engram: no session 'session:web:none'");
    require_one_line_failure(f.run({"fork", "user:x", "--at", "3"}), 2, "engram: conversation id must be a session");
    require_one_line_failure(f.run({"fork", s, "--at", "2", "--prompt", " "}), 2, "engram: 'prompt' must not be blank");
    require_one_line_failure(f.run({"fork", s}), 2, "engram: --at is required");
    auto none = f.client->get("/events?after=0&limit=1000&type=SessionForked");
    REQUIRE(none->json()["events"].empty());

    auto r = f.run({"fork", s, "--at", std::to_string(P), "--model", "other-model", "--key", "k1", "--json"});
    INFO(r.out);
    REQUIRE(r.code == 0);
    auto out = json::parse(r.out);
    const std::string fork = out["session_id"];
    CHECK(out["created"] == true);
    CHECK(out["origin_session_id"] == s);
    auto stored = f.aggregate_events(fork);
    REQUIRE(stored.size() == 1);
    CHECK(stored[0].type == "SessionForked");
    CHECK(stored[0].data["at_position"] == P);
    CHECK(stored[0].data["model"] == "other-model");
    CHECK(stored[0].data["source"] == "cli");
    CHECK(f.aggregate_events(s).size() == origin_before);  // the origin is untouched

    // The same key again: the same fork, not a second one.
    auto again = f.run({"fork", s, "--at", std::to_string(P), "--model", "other-model", "--key", "k1", "--json"});
    REQUIRE(again.code == 0);
    CHECK(json::parse(again.out)["session_id"] == fork);
    CHECK(json::parse(again.out)["created"] == false);
    auto plain = f.run({"fork", s, "--at", std::to_string(P), "--prompt", "something else"});
    INFO(plain.out);
    REQUIRE(plain.code == 0);
    CHECK(plain.out.find("forked from " + s + " at position " + std::to_string(P)) != std::string::npos);

    // The fork's own answer; its replay shows the origin up to P, then the fork (a local fold: no model).
    f.append("MessageGenerated", fork, answer("answer two, again"));
    auto rep = f.run({"replay", "conversation", fork, "--json"});
    INFO(rep.out);
    REQUIRE(rep.code == 0);
    auto view = json::parse(rep.out);
    CHECK(view["inherited_events"] == 3);
    std::vector<std::string> texts;
    for (const auto& m : view["state"]["messages"]) texts.push_back(m["text"]);
    CHECK(texts == std::vector<std::string>{"question one", "answer one", "question two", "answer two, again"});
    CHECK(view["state"]["forked_from"]["session_id"] == s);
    // The origin's replay is as before.
    auto orig = json::parse(f.run({"replay", "conversation", s, "--json"}).out);
    CHECK(orig["state"]["messages"].size() == 4);
    CHECK(orig["state"]["messages"][3]["text"] == "answer two");
    CHECK_FALSE(orig.contains("inherited_events"));
}
