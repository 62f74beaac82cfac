// Splitter and rate limiter (no services needed).
#include "notification_processor.h"
#include "rate_limit.h"
#include "split.h"

#include <catch2/catch.hpp>

#include <random>

using namespace engram::notification;
using namespace std::chrono;

namespace {

bool valid_utf8(const std::string& s) {
    for (std::size_t i = 0; i < s.size();) {
        unsigned char c = s[i];
        std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        i += n;
    }
    return true;
}

std::string strip_ws(const std::string& s) {
    std::string o;
    for (char c : s)
        if (c != ' ' && c != '\n' && c != '\t' && c != '\r') o += c;
    return o;
}

std::string joined(const std::vector<std::string>& parts) {
    std::string o;
    for (auto& p : parts) o += p;
    return o;
}

}  // namespace

TEST_CASE("a text within the limit is one unchanged part", "[unit][notification][split]") {
    CHECK(split_message("hello") == std::vector<std::string>{"hello"});
    std::string exact(4096, 'a');
    CHECK(split_message(exact) == std::vector<std::string>{exact});
    CHECK(split_message(exact + "b").size() == 2);
}

TEST_CASE("6000 characters in paragraphs split on a paragraph boundary", "[unit][notification][split]") {
    std::string p1(3000, 'x'), p2(2000, 'y'), p3(996, 'z');
    // sentences inside paragraphs, so a sentence boundary exists too
    p1.replace(1500, 2, ". ");
    std::string text = p1 + "\n\n" + p2 + "\n\n" + p3;
    auto parts = split_message(text);
    REQUIRE(parts.size() == 2);
    CHECK(parts[0] == p1);
    CHECK(parts[1] == p2 + "\n\n" + p3);
}

TEST_CASE("without paragraphs the cut falls on a sentence, then a word", "[unit][notification][split]") {
    std::string s;
    while (s.size() < 5000) s += "This is a sentence number " + std::to_string(s.size()) + ". ";
    auto parts = split_message(s);
    REQUIRE(parts.size() == 2);
    CHECK(parts[0].back() == '.');
    CHECK(telegram_length(parts[0]) <= 4096);
    CHECK(parts[0] + " " + parts[1] == s);  // only the space at the cut is dropped

    std::string words;
    while (words.size() < 5000) words += "word ";
    auto wp = split_message(words, 100);
    for (std::size_t i = 0; i < wp.size(); ++i) {
        CHECK(telegram_length(wp[i]) <= 100);
        CHECK(wp[i].front() != ' ');
        if (i + 1 < wp.size()) CHECK(wp[i].back() == 'd');  // the last part is the rest as is
    }
    CHECK(strip_ws(joined(wp)) == strip_ws(words));
}

TEST_CASE("a paragraph break too early gives way to a later sentence end", "[unit][notification][split]") {
    std::string text = "Hi.\n\n" + std::string(3000, 'a') + ". " + std::string(3000, 'b');
    auto parts = split_message(text);
    REQUIRE(parts.size() == 2);
    CHECK(parts[0] == "Hi.\n\n" + std::string(3000, 'a') + ".");
}

TEST_CASE("the splitter never cuts inside a UTF-8 sequence and counts UTF-16 units", "[unit][notification][split]") {
    CHECK(telegram_length("héllo") == 5);
    CHECK(telegram_length("\xF0\x9F\x98\x80") == 2);  // U+1F600 is a surrogate pair
    CHECK(telegram_length("\xE2\x82\xAC") == 1);      // €
    for (std::size_t limit : {4096u, 100u, 7u, 3u, 2u}) {
        for (const std::string unit : {"é", "€", "\xF0\x9F\x98\x80", "a€", "ab\xF0\x9F\x98\x80"}) {
            std::string text;
            while (telegram_length(text) < 9000) text += unit;
            auto parts = split_message(text, limit);
            INFO("limit " << limit << " unit " << unit);
            REQUIRE(parts.size() > 1);
            for (auto& p : parts) {
                CHECK(valid_utf8(p));
                CHECK(telegram_length(p) <= limit);
                CHECK(!p.empty());
            }
            CHECK(joined(parts) == text);  // no whitespace, nothing dropped
        }
    }
}

TEST_CASE("the 4096 limit holds for random mixed text and nothing but whitespace is lost", "[unit][notification][split]") {
    std::mt19937 rng(42);
    const std::vector<std::string> tokens = {"a",   "bb", "ccc", " ", " ", "\n", "\n\n", ". ", "! ", "é", "€", "\xF0\x9F\x98\x80",
                                             "word"};
    for (int round = 0; round < 50; ++round) {
        std::string text;
        std::size_t target = 100 + rng() % 20000;
        while (text.size() < target) text += tokens[rng() % tokens.size()];
        auto parts = split_message(text);
        for (auto& p : parts) {
            REQUIRE(telegram_length(p) <= kTelegramLimit);
            REQUIRE(valid_utf8(p));
            REQUIRE(!p.empty());
        }
        REQUIRE(strip_ws(joined(parts)) == strip_ws(text));
        if (telegram_length(text) <= kTelegramLimit) REQUIRE(parts.size() == 1);
    }
}

TEST_CASE("a token bucket spaces reservations at its rate", "[unit][notification][rate]") {
    auto t0 = steady_clock::time_point{} + hours(1);
    TokenBucket b(1.0, 1.0, t0);
    CHECK(b.reserve(t0) == nanoseconds{0});
    CHECK(b.reserve(t0) == seconds(1));
    CHECK(b.reserve(t0) == seconds(2));
    // after 3 s the balance is back to 0 -> +1 token
    CHECK(b.reserve(t0 + seconds(5)) == nanoseconds{0});
    TokenBucket burst(30.0, 30.0, t0);
    for (int i = 0; i < 30; ++i) CHECK(burst.reserve(t0) == nanoseconds{0});
    auto w = burst.reserve(t0);
    CHECK(w > milliseconds(30));
    CHECK(w < milliseconds(40));
}

TEST_CASE("the rate limiter: one per second per chat, thirty per second overall, retry_after", "[unit][notification][rate]") {
    auto now = steady_clock::time_point{} + hours(1);
    RateLimiter rl({}, [&] { return now; });
    CHECK(rl.reserve("a") == nanoseconds{0});
    CHECK(rl.reserve("a") == seconds(1));      // second message to the same chat waits a second
    CHECK(rl.reserve("b") == nanoseconds{0});  // another chat does not
    now += seconds(2);
    CHECK(rl.reserve("a") == nanoseconds{0});
    // 30 distinct chats at once: the global bucket (30 burst, 30/s; 3 taken above, refilled) runs out.
    now += seconds(5);
    int waited = 0;
    for (int i = 0; i < 40; ++i)
        if (rl.reserve("chat" + std::to_string(i)) > nanoseconds{0}) ++waited;
    CHECK(waited == 10);
    // retry_after 5 s for chat x
    now += seconds(10);
    rl.penalize("x", seconds(5));
    auto w = rl.reserve("x");
    CHECK(w >= seconds(5));
    CHECK(w < milliseconds(5100));
    now += seconds(7);
    CHECK(rl.reserve("x") == nanoseconds{0});
}

TEST_CASE("channel and chat id from the event", "[unit][notification]") {
    engram::events::Event e;
    e.type = "MessageGenerated";
    e.aggregate_id = "session:telegram:12345";
    e.data = {{"text", "hi"}, {"channel", "telegram"}};
    CHECK(channel_of(e) == "telegram");
    CHECK(telegram_chat_id(e) == "12345");
    e.data["chat_id"] = 777;
    CHECK(telegram_chat_id(e) == "777");
    e.data.erase("channel");
    e.aggregate_id = "session:slack:C1";
    CHECK(channel_of(e) == "slack");
    e.aggregate_id = "session:web:abc";
    e.data.erase("chat_id");
    CHECK(telegram_chat_id(e) == "");
}

TEST_CASE("settings: a bad value is one line", "[unit][notification]") {
    auto spec = settings_spec();
    std::map<std::string, std::string> env = {
        {"TELEGRAM_BOT_TOKEN", "nope"}, {"EMAIL_FROM", "not-an-address"}, {"SMTP_URL", "http://x"}};
    auto r = spec.load([&](const std::string& k) -> std::optional<std::string> {
        if (auto it = env.find(k); it != env.end()) return it->second;
        return std::nullopt;
    });
    REQUIRE(!r.ok());
    CHECK(r.error().detail.find('\n') == std::string::npos);
    CHECK(r.error().detail.find("TELEGRAM_BOT_TOKEN") != std::string::npos);
    CHECK(r.error().detail.find("EMAIL_FROM") != std::string::npos);
    CHECK(r.error().detail.find("SMTP_URL") != std::string::npos);
    CHECK(r.error().detail.find("nope") == std::string::npos);  // a secret is never printed
    env = {{"TELEGRAM_BOT_TOKEN", "123:abc-DEF_9"}, {"TELEGRAM_API_BASE", "http://127.0.0.1:9/"}};
    auto good = spec.load([&](const std::string& k) -> std::optional<std::string> {
        if (auto it = env.find(k); it != env.end()) return it->second;
        return std::nullopt;
    });
    REQUIRE(good.ok());
    CHECK(settings_from(*good).telegram_api_base == "http://127.0.0.1:9");
}
