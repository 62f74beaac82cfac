#include "fake_slack.h"

#include <deque>
#include <mutex>

#include "engram/http/server.h"

namespace engram::fakes {

using nlohmann::json;

struct FakeSlack::Impl {
    mutable std::mutex mu;
    std::deque<std::pair<int, std::string>> script;
    std::vector<json> posts;
    std::vector<std::string> attempts;
    std::unique_ptr<http::Server> server;

    void handle(http::Request& req, std::shared_ptr<http::Responder> res) {
        if (req.method != "POST" || req.path != "/hook") {
            res->respond(http::Response::text(404, "no_service"));
            return;
        }
        std::lock_guard lk(mu);
        attempts.push_back(req.body);
        if (!script.empty()) {
            auto [status, body] = script.front();
            script.pop_front();
            res->respond(http::Response::text(status, body));
            return;
        }
        json b = json::parse(req.body, nullptr, false);
        if (b.is_discarded() || !b.is_object() || !b.contains("text")) {
            res->respond(http::Response::text(400, "invalid_payload"));
            return;
        }
        posts.push_back(b);
        res->respond(http::Response::text(200, "ok"));
    }
};

FakeSlack::FakeSlack() : impl_(std::make_unique<Impl>()) {
    http::ServerOptions so;
    so.host = "127.0.0.1";
    so.port = 0;
    so.io_threads = 1;
    so.worker_threads = 4;
    Impl* impl = impl_.get();
    impl_->server = std::make_unique<http::Server>(
        so, [impl](http::Request& req, std::shared_ptr<http::Responder> res) { impl->handle(req, std::move(res)); });
    impl_->server->start();
}
FakeSlack::~FakeSlack() { impl_->server->stop(); }

std::string FakeSlack::url() const { return "http://127.0.0.1:" + std::to_string(port()) + "/hook"; }
int FakeSlack::port() const { return impl_->server->port(); }
void FakeSlack::push_status(int status, std::string body, int count) {
    std::lock_guard lk(impl_->mu);
    for (int i = 0; i < count; ++i) impl_->script.emplace_back(status, body);
}
std::vector<json> FakeSlack::posts() const {
    std::lock_guard lk(impl_->mu);
    return impl_->posts;
}
std::size_t FakeSlack::post_count() const {
    std::lock_guard lk(impl_->mu);
    return impl_->posts.size();
}
std::vector<std::string> FakeSlack::attempts() const {
    std::lock_guard lk(impl_->mu);
    return impl_->attempts;
}

}  // namespace engram::fakes
