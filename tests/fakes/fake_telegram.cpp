#include "fake_telegram.h"

#include <condition_variable>
#include <deque>
#include <mutex>

#include "engram/http/server.h"
#include "engram/http/url.h"

namespace engram::fakes {

using nlohmann::json;
using std::chrono::milliseconds;

struct FakeTelegram::Impl {
    struct Scripted {
        int status;
        json body;
    };
    std::string token;
    mutable std::mutex mu;
    std::condition_variable cv;
    bool stopping = false;
    std::deque<Scripted> script;
    milliseconds send_delay{0};
    milliseconds next_delay{0};
    std::vector<Message> messages;
    std::size_t send_calls = 0;
    std::int64_t next_message_id = 1000;
    std::deque<json> updates;
    std::int64_t next_update_id = 1;
    bool conflict = false;
    std::vector<json> get_updates_calls;
    std::vector<json> webhook_calls;
    std::vector<std::string> methods;
    std::vector<std::pair<std::string, std::string>> chat_actions;  // (chat_id, action) of sendChatAction
    std::unique_ptr<http::Server> server;

    static json params(const http::Request& req) {
        json p = json::object();
        for (auto& [k, v] : req.query) p[k] = v;
        if (!req.body.empty()) {
            json b = json::parse(req.body, nullptr, false);
            if (b.is_object()) {
                for (auto& [k, v] : b.items()) p[k] = v;
            } else {
                for (auto& [k, v] : http::parse_query(req.body)) p[k] = v;
            }
        }
        return p;
    }
    static std::string str(const json& v) {
        if (v.is_string()) return v.get<std::string>();
        if (v.is_null()) return "";
        return v.dump();
    }
    static http::Response err(int status, const std::string& description, json extra = json::object()) {
        json b = {{"ok", false}, {"error_code", status}, {"description", description}};
        for (auto& [k, v] : extra.items()) b[k] = v;
        return http::Response::json(status, b);
    }
    void sleep(milliseconds d) {
        if (d.count() <= 0) return;
        std::unique_lock lk(mu);
        cv.wait_for(lk, d, [&] { return stopping; });
    }

    void handle(http::Request& req, std::shared_ptr<http::Responder> res) {
        const std::string prefix = "/bot";
        auto slash = req.path.find('/', 1);
        if (req.path.rfind(prefix, 0) != 0 || slash == std::string::npos) {
            res->respond(err(404, "Not Found"));
            return;
        }
        std::string tok = req.path.substr(prefix.size(), slash - prefix.size());
        std::string method = req.path.substr(slash + 1);
        if (tok != token) {
            res->respond(err(401, "Unauthorized"));
            return;
        }
        json p = params(req);
        {
            std::lock_guard lk(mu);
            methods.push_back(method);
        }
        if (method == "sendMessage") return send_message(p, res);
        if (method == "getUpdates") return get_updates(p, res);
        if (method == "setWebhook" || method == "deleteWebhook") {
            {
                std::lock_guard lk(mu);
                json c = p;
                c["method"] = method;
                webhook_calls.push_back(c);
            }
            res->respond(
                http::Response::json(200, {{"ok", true},
                                           {"result", true},
                                           {"description", method == "setWebhook" ? "Webhook was set" : "Webhook was deleted"}}));
            return;
        }
        if (method == "sendChatAction") {
            {
                std::lock_guard lk(mu);
                chat_actions.push_back({p.contains("chat_id")
                                            ? (p["chat_id"].is_string() ? p["chat_id"].get<std::string>() : p["chat_id"].dump())
                                            : "",
                                        p.value("action", "")});
            }
            res->respond(http::Response::json(200, {{"ok", true}, {"result", true}}));
            return;
        }
        if (method == "getWebhookInfo") {
            res->respond(http::Response::json(200, {{"ok", true}, {"result", {{"url", ""}, {"pending_update_count", 0}}}}));
            return;
        }
        if (method == "getMe") {
            res->respond(http::Response::json(
                200, {{"ok", true},
                      {"result", {{"id", 123456}, {"is_bot", true}, {"first_name", "Fake"}, {"username", "fake_bot"}}}}));
            return;
        }
        res->respond(err(404, "Not Found: method not found"));
    }

    void send_message(const json& p, const std::shared_ptr<http::Responder>& res) {
        milliseconds delay{0};
        http::Response answer;
        {
            std::lock_guard lk(mu);
            ++send_calls;
            if (!script.empty()) {
                auto s = std::move(script.front());
                script.pop_front();
                answer = http::Response::json(s.status, s.body);
            } else if (!p.contains("chat_id") || str(p["chat_id"]).empty()) {
                answer = err(400, "Bad Request: chat_id is empty");
            } else if (!p.contains("text") || str(p["text"]).empty()) {
                answer = err(400, "Bad Request: message text is empty");
            } else if (str(p["text"]).size() > 4096 * 4) {
                answer = err(400, "Bad Request: message is too long");
            } else {
                Message m;
                m.chat_id = str(p["chat_id"]);
                m.text = str(p["text"]);
                m.message_id = next_message_id++;
                m.request = p;
                messages.push_back(m);
                json chat_id = p["chat_id"];
                if (chat_id.is_string()) {
                    try {
                        chat_id = std::stoll(chat_id.get<std::string>());
                    } catch (...) {}
                }
                answer = http::Response::json(200, {{"ok", true},
                                                    {"result",
                                                     {{"message_id", m.message_id},
                                                      {"chat", {{"id", chat_id}, {"type", "private"}}},
                                                      {"date", 1700000000},
                                                      {"text", m.text}}}});
                delay = send_delay + next_delay;
                next_delay = milliseconds{0};
            }
        }
        sleep(delay);
        res->respond(std::move(answer));
    }

    void get_updates(const json& p, const std::shared_ptr<http::Responder>& res) {
        std::int64_t offset = 0;
        int timeout = 0;
        std::size_t limit = 100;
        try {
            if (p.contains("offset"))
                offset = p["offset"].is_string() ? std::stoll(p["offset"].get<std::string>()) : p["offset"].get<std::int64_t>();
            if (p.contains("timeout"))
                timeout = p["timeout"].is_string() ? std::stoi(p["timeout"].get<std::string>()) : p["timeout"].get<int>();
            if (p.contains("limit"))
                limit = p["limit"].is_string() ? std::stoul(p["limit"].get<std::string>()) : p["limit"].get<std::size_t>();
        } catch (...) {
            res->respond(err(400, "Bad Request: wrong parameter"));
            return;
        }
        std::unique_lock lk(mu);
        get_updates_calls.push_back(p);
        if (conflict) {
            lk.unlock();
            res->respond(
                err(409, "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"));
            return;
        }
        auto confirm = [&] {
            while (!updates.empty() && updates.front()["update_id"].get<std::int64_t>() < offset) updates.pop_front();
        };
        confirm();
        if (updates.empty() && timeout > 0)
            cv.wait_for(lk, std::chrono::seconds(timeout), [&] {
                confirm();
                return stopping || !updates.empty() || conflict;
            });
        json result = json::array();
        for (auto& u : updates) {
            if (result.size() >= limit) break;
            result.push_back(u);
        }
        lk.unlock();
        res->respond(http::Response::json(200, {{"ok", true}, {"result", result}}));
    }
};

FakeTelegram::FakeTelegram(std::string token) : impl_(std::make_unique<Impl>()) {
    impl_->token = std::move(token);
    http::ServerOptions so;
    so.host = "127.0.0.1";
    so.port = 0;
    so.io_threads = 1;
    so.worker_threads = 8;
    Impl* impl = impl_.get();
    impl_->server = std::make_unique<http::Server>(
        so, [impl](http::Request& req, std::shared_ptr<http::Responder> res) { impl->handle(req, std::move(res)); });
    impl_->server->start();
}

FakeTelegram::~FakeTelegram() {
    {
        std::lock_guard lk(impl_->mu);
        impl_->stopping = true;
    }
    impl_->cv.notify_all();
    impl_->server->stop();
}

std::string FakeTelegram::base_url() const { return "http://127.0.0.1:" + std::to_string(port()); }
int FakeTelegram::port() const { return impl_->server->port(); }
const std::string& FakeTelegram::token() const { return impl_->token; }

std::vector<FakeTelegram::Message> FakeTelegram::messages() const {
    std::lock_guard lk(impl_->mu);
    return impl_->messages;
}
std::size_t FakeTelegram::message_count() const {
    std::lock_guard lk(impl_->mu);
    return impl_->messages.size();
}
std::vector<std::pair<std::string, std::string>> FakeTelegram::chat_actions() const {
    std::lock_guard lk(impl_->mu);
    return impl_->chat_actions;
}
std::size_t FakeTelegram::send_calls() const {
    std::lock_guard lk(impl_->mu);
    return impl_->send_calls;
}
void FakeTelegram::push_429(int retry_after, int count) {
    std::lock_guard lk(impl_->mu);
    for (int i = 0; i < count; ++i)
        impl_->script.push_back({429,
                                 {{"ok", false},
                                  {"error_code", 429},
                                  {"description", "Too Many Requests: retry after " + std::to_string(retry_after)},
                                  {"parameters", {{"retry_after", retry_after}}}}});
}
void FakeTelegram::push_error(int status, std::string description, int count) {
    std::lock_guard lk(impl_->mu);
    for (int i = 0; i < count; ++i)
        impl_->script.push_back({status, {{"ok", false}, {"error_code", status}, {"description", description}}});
}
void FakeTelegram::set_send_delay(milliseconds d) {
    std::lock_guard lk(impl_->mu);
    impl_->send_delay = d;
}
void FakeTelegram::delay_next(milliseconds d) {
    std::lock_guard lk(impl_->mu);
    impl_->next_delay = d;
}
void FakeTelegram::push_update(json update) {
    {
        std::lock_guard lk(impl_->mu);
        if (!update.contains("update_id")) update["update_id"] = impl_->next_update_id;
        impl_->next_update_id = std::max(impl_->next_update_id, update["update_id"].get<std::int64_t>() + 1);
        impl_->updates.push_back(std::move(update));
    }
    impl_->cv.notify_all();
}
void FakeTelegram::set_conflict(bool on) {
    {
        std::lock_guard lk(impl_->mu);
        impl_->conflict = on;
    }
    impl_->cv.notify_all();
}
std::vector<json> FakeTelegram::get_updates_calls() const {
    std::lock_guard lk(impl_->mu);
    return impl_->get_updates_calls;
}
std::vector<json> FakeTelegram::webhook_calls() const {
    std::lock_guard lk(impl_->mu);
    return impl_->webhook_calls;
}
std::vector<std::string> FakeTelegram::methods() const {
    std::lock_guard lk(impl_->mu);
    return impl_->methods;
}

}  // namespace engram::fakes
