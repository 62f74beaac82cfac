#pragma once
// A fake Slack incoming webhook on 127.0.0.1 (free port): POST /hook records each body (in order) and
// answers 200 "ok", or the next scripted status. Thread-safe. Link engram_fake_chat.
#include <cstddef>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace engram::fakes {

class FakeSlack {
public:
    FakeSlack();
    ~FakeSlack();
    FakeSlack(const FakeSlack&) = delete;
    FakeSlack& operator=(const FakeSlack&) = delete;

    std::string url() const;  // http://127.0.0.1:<port>/hook  (SLACK_WEBHOOK_URL)
    int port() const;

    // The next `count` POSTs answer `status` with `body` (Slack answers e.g. 400 "invalid_payload",
    // 403 "action_prohibited", 404 "no_service", 500). Failed posts are recorded in attempts() only.
    void push_status(int status, std::string body = "error", int count = 1);
    std::vector<nlohmann::json> posts() const;  // accepted bodies (parsed JSON; raw string when not JSON)
    std::size_t post_count() const;
    std::vector<std::string> attempts() const;  // every raw body received

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace engram::fakes
