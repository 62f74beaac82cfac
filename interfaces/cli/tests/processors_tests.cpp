// `engram processors` against a real PostgreSQL holding the processor runtime's tables: each case
// runs the CLI binary as a child process and checks its table, its --json document and its exit code.
#include "engram/processor/processor.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "engram/core/uuid.h"
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

std::vector<std::string> words(const std::string& line) {
    std::vector<std::string> out;
    std::istringstream in(line);
    for (std::string w; in >> w;) out.push_back(w);
    return out;
}

std::string engram_bin() { return t::build_dir() + "/interfaces/cli/engram"; }

t::Ran run(const std::string& db, std::vector<std::string> args) {
    std::vector<std::string> a{engram_bin(), "--database-url", db};
    a.insert(a.end(), args.begin(), args.end());
    return t::run(a, {{"DATABASE_URL", ""}});
}

// The lines of one processor's block: from its summary line to the next blank-separated summary.
std::vector<std::string> block(const std::string& out, const std::string& name) {
    std::vector<std::string> got;
    bool in = false;
    for (const auto& l : lines_of(out)) {
        if (l.find("-processor: ") != std::string::npos && l.find("pending") != std::string::npos)
            in = l.rfind(name + ": ", 0) == 0;
        if (in) got.push_back(l);
    }
    return got;
}

// The line of `rows` whose first word is `first`, as words ({} when none).
std::vector<std::string> row(const std::vector<std::string>& rows, const std::string& first) {
    for (const auto& l : rows) {
        auto w = words(l);
        if (!w.empty() && w[0] == first) return w;
    }
    return {};
}

bool iso_utc(const json& v) {
    static const std::regex re(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");
    return v.is_string() && std::regex_match(v.get<std::string>(), re);
}

// Two processors over 5 partitions:
//  alpha: member A live (partitions 0, 1), member B gone (its lease of 2 expired), partition 3
//         released (a row, no owner), partition 4 never claimed (no row);
//  beta:  member C live (partition 0), no other row.
struct Fixture {
    std::string db = t::Postgres::shared().create_database();
    std::string a = engram::Uuid::v4().str(), b = engram::Uuid::v4().str(), c = engram::Uuid::v4().str();

    Fixture() {
        // The runtime's own migration, with the partition count it records.
        auto migrated = engram::processor::migrate(db, 5);
        if (!migrated) throw std::runtime_error(migrated.error().detail);
        pqxx::connection conn(db);
        pqxx::work tx(conn);
        tx.exec_params(
            "INSERT INTO processor_members (processor, member, host, pid, listen, started_at, heartbeat_at, expires_at) VALUES "
            "('alpha-processor', $1, 'web-1', 101, '127.0.0.1:9101', '2026-01-02T03:04:05.678Z', now() - interval '2 s', "
            " now() + interval '1 hour'), "
            "('alpha-processor', $2, 'web-2', 202, '', '2026-01-01T00:00:00Z', now() - interval '10 min', "
            " now() - interval '9 min'), "
            "('beta-processor', $3, 'web-3', 303, '0.0.0.0:9200', now() - interval '1 hour', now(), now() + interval '1 hour')",
            a, b, c);
        tx.exec_params(
            "INSERT INTO processor_leases (processor, partition, owner, epoch, expires_at, checkpoint, position, pending, "
            "updated_at) VALUES "
            "('alpha-processor', 0, $1, 3, now() + interval '1 hour', 120, 4410, 5, now() - interval '1 s'), "
            "('alpha-processor', 1, $1, 1, now() + interval '1 hour', 7, 70, 0, now()), "
            "('alpha-processor', 2, $2, 2, now() - interval '9 min', 50, 500, 37, now() - interval '10 min'), "
            "('alpha-processor', 3, NULL, 4, NULL, 9, 90, 1, '2026-01-01T12:00:00.5Z'), "
            "('beta-processor', 0, $3, 1, now() + interval '1 hour', 3, 33, 2, now())",
            a, b, c);
        tx.commit();
    }
};

std::string short_id(const std::string& id) { return id.substr(0, 8); }

// An age cell ("2.0s") at least `min` seconds and a few seconds more at most (the CLI runs after
// the rows were written).
bool seconds_between(const std::string& cell, double min, double max) {
    if (cell.empty() || cell.back() != 's') return false;
    double v = std::stod(cell);
    return v >= min && v <= max;
}

// `words` with the age cell at `at` (and its "ago") checked and removed.
std::vector<std::string> without_age(std::vector<std::string> w, std::size_t at, double min) {
    if (w.size() < at + 2 || !seconds_between(w[at], min, min + 5) || w[at + 1] != "ago") return {"bad age in"};
    w.erase(w.begin() + static_cast<std::ptrdiff_t>(at), w.begin() + static_cast<std::ptrdiff_t>(at) + 2);
    return w;
}

}  // namespace

TEST_CASE("processors shows members, leases and a summary per processor", "[integration][cli][processors]") {
    Fixture f;
    auto r = run(f.db, {"processors"});
    INFO(r.output);
    REQUIRE(r.exit_code == 0);

    auto alpha = block(r.output, "alpha-processor");
    REQUIRE(!alpha.empty());
    CHECK(alpha[0] == "alpha-processor: 1 instance, 2/5 partitions owned, 43 pending");
    CHECK(words(alpha[1]) ==
          std::vector<std::string>{"MEMBER", "STATE", "HOST", "PID", "LISTEN", "STARTED", "HEARTBEAT", "PARTITIONS"});
    CHECK(without_age(row(alpha, short_id(f.a)), 6, 2) == std::vector<std::string>{short_id(f.a), "live", "web-1", "101",
                                                                                   "127.0.0.1:9101", "2026-01-02T03:04:05Z", "2",
                                                                                   "(0-1)"});
    auto gone = row(alpha, short_id(f.b));
    REQUIRE(gone.size() == 9);
    CHECK(gone[1] == "gone");
    CHECK(gone[2] == "web-2");
    CHECK(gone[4] == "-");  // no listen address
    CHECK(gone[6].rfind("10m0", 0) == 0);
    CHECK(gone[8] == "0");

    CHECK(row(alpha, "PARTITION") ==
          std::vector<std::string>{"PARTITION", "OWNER", "EPOCH", "CHECKPOINT", "POSITION", "PENDING", "UPDATED"});
    CHECK(without_age(row(alpha, "0"), 6, 1) == std::vector<std::string>{"0", short_id(f.a), "3", "120", "4410", "5"});
    CHECK(without_age(row(alpha, "1"), 6, 0) == std::vector<std::string>{"1", short_id(f.a), "1", "7", "70", "0"});
    auto expired = row(alpha, "2");
    REQUIRE(expired.size() == 9);
    CHECK(std::vector<std::string>(expired.begin(), expired.begin() + 7) ==
          std::vector<std::string>{"2", short_id(f.b), "(expired)", "2", "50", "500", "37"});
    CHECK(expired[7].rfind("10m0", 0) == 0);
    auto released = row(alpha, "3");
    REQUIRE(released.size() == 8);
    CHECK(std::vector<std::string>(released.begin(), released.begin() + 6) ==
          std::vector<std::string>{"3", "-", "4", "9", "90", "1"});
    CHECK(released[6].back() == 'd');                                                       // days ago
    CHECK(row(alpha, "4") == std::vector<std::string>{"4", "-", "0", "0", "0", "0", "-"});  // no row yet

    auto beta = block(r.output, "beta-processor");
    REQUIRE(!beta.empty());
    CHECK(beta[0] == "beta-processor: 1 instance, 1/5 partitions owned, 2 pending");
    CHECK(row(beta, short_id(f.c)).at(8) == "1");
    CHECK(row(beta, "0").at(1) == short_id(f.c));
    for (const char* p : {"1", "2", "3", "4"}) CHECK(row(beta, p) == std::vector<std::string>{p, "-", "0", "0", "0", "0", "-"});
    // Processors by name; nothing of one shows in the other's block.
    CHECK(r.output.find("alpha-processor:") < r.output.find("beta-processor:"));
    CHECK(row(beta, short_id(f.a)).empty());

    SECTION("--processor shows one") {
        auto only = run(f.db, {"processors", "--processor", "beta-processor"});
        INFO(only.output);
        REQUIRE(only.exit_code == 0);
        CHECK(only.output.find("beta-processor: 1 instance") != std::string::npos);
        CHECK(only.output.find("alpha-processor") == std::string::npos);
        auto none = run(f.db, {"processors", "--processor", "nope"});
        REQUIRE(none.exit_code == 0);
        CHECK(lines_of(none.output) == std::vector<std::string>{"no processor nope has started against this database yet"});
    }
}

TEST_CASE("processors --json is one document with full ids and UTC timestamps", "[integration][cli][processors]") {
    Fixture f;
    auto r = run(f.db, {"processors", "--json"});
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    auto doc = json::parse(r.output);
    CHECK(doc["partitions"] == 5);
    CHECK(iso_utc(doc["now"]));
    REQUIRE(doc["processors"].size() == 2);

    const auto& alpha = doc["processors"][0];
    CHECK(alpha["name"] == "alpha-processor");
    CHECK(alpha["instances"] == 1);
    CHECK(alpha["owned"] == 2);
    CHECK(alpha["pending"] == 43);
    REQUIRE(alpha["members"].size() == 2);
    const auto& ma = alpha["members"][0];
    CHECK(ma["member"] == f.a);
    CHECK(ma["live"] == true);
    CHECK(ma["host"] == "web-1");
    CHECK(ma["pid"] == 101);
    CHECK(ma["listen"] == "127.0.0.1:9101");
    CHECK(ma["started_at"] == "2026-01-02T03:04:05.678Z");
    CHECK(iso_utc(ma["heartbeat_at"]));
    CHECK(iso_utc(ma["expires_at"]));
    CHECK(ma["partitions"] == json::array({0, 1}));
    const auto& mb = alpha["members"][1];
    CHECK(mb["member"] == f.b);
    CHECK(mb["live"] == false);
    CHECK(mb["listen"] == "");
    CHECK(mb["started_at"] == "2026-01-01T00:00:00.000Z");
    CHECK(mb["partitions"] == json::array());

    const auto& leases = alpha["leases"];
    REQUIRE(leases.size() == 5);
    for (int i = 0; i < 5; ++i) CHECK(leases[i]["partition"] == i);
    CHECK(leases[0]["state"] == "held");
    CHECK(leases[0]["owner"] == f.a);
    CHECK(leases[0]["epoch"] == 3);
    CHECK(leases[0]["checkpoint"] == 120);
    CHECK(leases[0]["position"] == 4410);
    CHECK(leases[0]["pending"] == 5);
    CHECK(iso_utc(leases[0]["expires_at"]));
    CHECK(iso_utc(leases[0]["updated_at"]));
    CHECK(leases[2]["state"] == "expired");
    CHECK(leases[2]["owner"] == f.b);
    CHECK(leases[2]["pending"] == 37);
    CHECK(leases[3]["state"] == "free");
    CHECK(leases[3]["owner"].is_null());
    CHECK(leases[3]["expires_at"].is_null());
    CHECK(leases[3]["epoch"] == 4);
    CHECK(leases[3]["updated_at"] == "2026-01-01T12:00:00.500Z");
    CHECK(leases[4] == json{{"partition", 4},
                            {"state", "free"},
                            {"owner", nullptr},
                            {"epoch", 0},
                            {"expires_at", nullptr},
                            {"checkpoint", 0},
                            {"position", 0},
                            {"pending", 0},
                            {"updated_at", nullptr}});

    const auto& beta = doc["processors"][1];
    CHECK(beta["name"] == "beta-processor");
    CHECK(beta["owned"] == 1);
    CHECK(beta["pending"] == 2);
    CHECK(beta["members"][0]["member"] == f.c);
    CHECK(beta["members"][0]["partitions"] == json::array({0}));
    CHECK(beta["leases"].size() == 5);

    auto only = json::parse(run(f.db, {"processors", "--json", "--processor", "beta-processor"}).output);
    REQUIRE(only["processors"].size() == 1);
    CHECK(only["processors"][0] == beta);
    auto none = run(f.db, {"--json", "processors", "--processor", "nope"});
    REQUIRE(none.exit_code == 0);
    CHECK(json::parse(none.output)["processors"] == json::array());
}

TEST_CASE("processors --json read by python3's json module", "[integration][cli][processors]") {
    Fixture f;
    // A client from another stack: the document parses with json.load, timestamps with strptime.
    static const char* script = R"(import json, subprocess, sys
from datetime import datetime
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
doc = json.load(p.stdout)
assert p.wait() == 0
utc = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")
utc(doc["now"])
for pr in doc["processors"]:
    for m in pr["members"]:
        utc(m["started_at"]); utc(m["heartbeat_at"]); utc(m["expires_at"])
    for l in pr["leases"]:
        if l["updated_at"] is not None: utc(l["updated_at"])
    print("PROC", pr["name"], doc["partitions"], pr["instances"], pr["owned"], pr["pending"],
          ",".join(l["state"] for l in pr["leases"]),
          ",".join(m["member"][:8] + ("+" if m["live"] else "-") for m in pr["members"]))
)";
    auto r =
        t::run({"python3", "-c", script, engram_bin(), "--database-url", f.db, "processors", "--json"}, {{"DATABASE_URL", ""}});
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    std::vector<std::string> procs;
    for (const auto& l : lines_of(r.output))
        if (l.rfind("PROC ", 0) == 0) procs.push_back(l);
    CHECK(procs == std::vector<std::string>{
                       "PROC alpha-processor 5 1 2 43 held,held,expired,free,free " + short_id(f.a) + "+," + short_id(f.b) + "-",
                       "PROC beta-processor 5 1 1 2 held,free,free,free,free " + short_id(f.c) + "+"});
}

TEST_CASE("processors before any processor started, and without a database", "[integration][cli][processors]") {
    const std::string db = t::Postgres::shared().create_database();
    auto human = run(db, {"processors"});
    INFO(human.output);
    REQUIRE(human.exit_code == 0);
    CHECK(lines_of(human.output) == std::vector<std::string>{"no processor has started against this database yet"});
    auto js = run(db, {"processors", "--json"});
    INFO(js.output);
    REQUIRE(js.exit_code == 0);
    auto doc = json::parse(js.output);
    CHECK(doc["partitions"].is_null());
    CHECK(doc["processors"] == json::array());

    // The settings alone (recorded by another service) are not a started processor.
    {
        pqxx::connection c(db);
        pqxx::work tx(c);
        tx.exec("CREATE TABLE engram_settings (key text PRIMARY KEY, value text NOT NULL)");
        tx.exec("INSERT INTO engram_settings VALUES ('partitions', '16')");
        tx.commit();
    }
    auto settings = json::parse(run(db, {"processors", "--json"}).output);
    CHECK(settings["partitions"] == 16);
    CHECK(settings["processors"] == json::array());

    // Nothing listens there: one line, exit 1.
    auto down = run("postgresql://postgres@127.0.0.1:" + std::to_string(t::free_port()) + "/nope", {"processors"});
    INFO(down.output);
    CHECK(down.exit_code == 1);
    REQUIRE(lines_of(down.output).size() == 1);
    CHECK(lines_of(down.output)[0].rfind("engram: cannot connect to the database: ", 0) == 0);

    auto no_url = t::run({engram_bin(), "processors"}, {{"DATABASE_URL", ""}});
    INFO(no_url.output);
    CHECK(no_url.exit_code == 2);
    CHECK(lines_of(no_url.output) ==
          std::vector<std::string>{"engram: processors needs the database: pass --database-url or set DATABASE_URL"});

    auto help = t::run({engram_bin(), "processors", "--help"});
    REQUIRE(help.exit_code == 0);
    for (const char* field :
         {"--processor", "\"partitions\"", "\"instances\"", "\"heartbeat_at\"", "\"checkpoint\"", "\"expired\""})
        CHECK(help.output.find(field) != std::string::npos);
    CHECK(help.output.find("Commands:") == std::string::npos);  // the top-level command list stays there
    auto top = t::run({engram_bin(), "--help"});
    CHECK(top.output.find("processors [--processor NAME]") != std::string::npos);
}
