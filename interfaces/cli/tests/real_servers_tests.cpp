// The `engram` CLI's store client through nginx in front of the real event store: large paged reads
// that nginx buffers and re-frames, appends from fresh processes, and --follow polling on one
// kept-alive connection.
#include <signal.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "engram/http/client.h"
#include "engram/testing/testing.h"

using nlohmann::json;
namespace t = engram::testing;

namespace {

std::vector<std::string> lines_of(const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);)
        if (!l.empty() && l.front() == '{') out.push_back(l);
    return out;
}

struct Cli {
    t::Stack stack{"cli-nginx"};
    t::Nginx nginx{stack.url()};
    int runs = 0;

    std::unique_ptr<t::Process> start(std::vector<std::string> args) {
        std::vector<std::string> a{t::build_dir() + "/interfaces/cli/engram", "--url", nginx.url()};
        a.insert(a.end(), args.begin(), args.end());
        return std::make_unique<t::Process>(a, std::map<std::string, std::string>{{"DATABASE_URL", ""}},
                                            stack.dir() + "/cli-" + std::to_string(++runs) + ".log");
    }
    std::pair<int, std::string> run(std::vector<std::string> args) {
        auto p = start(std::move(args));
        int code = p->wait();
        return {code, p->log()};
    }
};

}  // namespace

TEST_CASE("cli through nginx: 2500 events paged, appends from 30 processes, --follow polling", "[integration][cli]") {
    Cli cli;
    engram::http::Client store(cli.stack.url());
    for (int batch = 0; batch < 25; ++batch) {
        json events = json::array();
        for (int i = 0; i < 100; ++i)
            events.push_back({{"type", "NoteTaken"}, {"data", {{"n", batch * 100 + i}, {"text", std::string(200, 'n')}}}});
        auto r = store.post_json("/events", {{"aggregate_id", "user:" + std::to_string(batch)}, {"events", events}});
        REQUIRE(r.ok());
        REQUIRE(r->status == 201);
    }
    auto [code, out] = cli.run({"events", "tail", "--json"});
    INFO(out.substr(0, 2000) << "\n" << cli.nginx.error_log());
    REQUIRE(code == 0);
    auto lines = lines_of(out);
    REQUIRE(lines.size() == 2500);
    for (std::size_t i = 0; i < lines.size(); ++i) {
        auto e = json::parse(lines[i]);
        REQUIRE(e["position"] == i + 1);
        REQUIRE(e["data"]["n"] == i);
    }

    for (int i = 0; i < 30; ++i) {
        auto [c, o] = cli.run({"append", "--type", "NoteTaken", "--aggregate", "user:cli", "--data", json{{"i", i}}.dump()});
        INFO(o);
        REQUIRE(c == 0);
        REQUIRE(o.find("appended ") != std::string::npos);
    }
    CHECK(cli.stack.count("NoteTaken", "user:cli") == 30);

    auto follow = cli.start({"events", "tail", "--follow", "--json", "--aggregate", "user:live"});
    for (int i = 0; i < 5; ++i) {
        auto r = store.post_json("/events", {{"type", "NoteTaken"}, {"aggregate_id", "user:live"}, {"data", {{"i", i}}}});
        REQUIRE(r.ok());
        REQUIRE(r->status == 201);
    }
    REQUIRE(t::eventually([&] { return lines_of(follow->log()).size() == 5; }, std::chrono::seconds(20)));
    ::kill(follow->pid(), SIGINT);
    CHECK(follow->wait() == 0);
    auto live = lines_of(follow->log());
    for (int i = 0; i < 5; ++i) CHECK(json::parse(live[i])["data"]["i"] == i);
}
