// The event-stream parser behind Client::sse, directly: WHATWG line endings, splits anywhere, the
// size bound; and the fuzz target run over its seed corpus so it builds and runs in every build.
#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include "../src/sse_parser.h"

#ifndef ENGRAM_SSE_CORPUS_DIR
#error "ENGRAM_SSE_CORPUS_DIR must be defined by libs/http/tests/CMakeLists.txt"
#endif

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

using engram::http::detail::SseParser;
using Event = std::tuple<std::string, std::string, std::string>;

namespace {

struct Collect {
    std::vector<Event> events;
    std::size_t stop_after = SIZE_MAX;
    SseParser parser;
    explicit Collect(std::size_t limit = 1 << 20)
        : parser(
              [this](const std::string& id, const std::string& ev, const std::string& data) {
                  events.emplace_back(id, ev, data);
                  return events.size() < stop_after;
              },
              limit) {}
};

Event ev(std::string id, std::string type, std::string data) { return {std::move(id), std::move(type), std::move(data)}; }

}  // namespace

TEST_CASE("sse parser: every line ending, split anywhere, gives the same events", "[unit][http][sse]") {
    const std::string stream =
        "\xEF\xBB\xBF"
        "id: 1\nevent: A\ndata: x\n\n"
        "id: 2\r\nevent: B\r\ndata: one\r\ndata: two\r\n\r\n"
        "id: 3\revent: C\rdata:three\r\r"
        ": comment\n\n"
        "data\n\n"
        "id\ndata: reset id\n\n"
        "data: unterminated";
    const std::vector<Event> want = {ev("1", "A", "x"), ev("2", "B", "one\ntwo"), ev("3", "C", "three"), ev("3", "message", ""),
                                     ev("", "message", "reset id")};
    for (std::size_t piece = 1; piece <= stream.size(); ++piece) {
        Collect c;
        for (std::size_t at = 0; at < stream.size(); at += piece)
            REQUIRE(c.parser.feed(std::string_view(stream).substr(at, piece)) == SseParser::Feed::more);
        INFO("pieces of " << piece);
        REQUIRE(c.events == want);
    }
}

TEST_CASE("sse parser: a line or an event over the limit is refused, the callback can stop", "[unit][http][sse]") {
    Collect line(16);
    CHECK(line.parser.feed("data: 0123456789") == SseParser::Feed::more);  // exactly 16 buffered
    CHECK(line.parser.feed("x") == SseParser::Feed::too_large);
    CHECK(line.events.empty());

    Collect joined(16);
    CHECK(joined.parser.feed("data: 12345678\n") == SseParser::Feed::more);
    CHECK(joined.parser.feed("data: 1234567\n") == SseParser::Feed::more);  // 8 + '\n' + 7 = 16
    CHECK(joined.parser.feed("data: 1\n") == SseParser::Feed::too_large);
    CHECK(joined.events.empty());

    Collect endless(64);
    std::string garbage(4096, 'g');  // a server that never ends its line
    CHECK(endless.parser.feed(garbage) == SseParser::Feed::too_large);

    Collect stop;
    stop.stop_after = 2;
    CHECK(stop.parser.feed("data: 1\n\ndata: 2\n\ndata: 3\n\n") == SseParser::Feed::stopped);
    CHECK(stop.events.size() == 2);
}

TEST_CASE("the sse parser fuzz target runs over its seed corpus", "[unit][http][sse]") {
    std::size_t files = 0;
    for (const auto& entry : std::filesystem::directory_iterator(ENGRAM_SSE_CORPUS_DIR)) {
        if (!entry.is_regular_file()) continue;
        std::ifstream in(entry.path(), std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        INFO(entry.path());
        CHECK(LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()) == 0);
        ++files;
    }
    CHECK(files >= 5);
    // And inputs no seed covers: the empty input, a single byte, every limit with a long stream.
    CHECK(LLVMFuzzerTestOneInput(nullptr, 0) == 0);
    const std::uint8_t one = 7;
    CHECK(LLVMFuzzerTestOneInput(&one, 1) == 0);
    std::string big = "x" + std::string(3000, 'a') + "\n" + std::string(200, '\n') + "data: y\r\n\r\n";
    for (int b = 0; b < 256; b += 13) {
        big[0] = static_cast<char>(b);
        CHECK(LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(big.data()), big.size()) == 0);
    }
}
