// The light parts of the API (no Beast/Asio here).
#include "engram/http/client.h"
#include "engram/http/server.h"

namespace engram::http {
namespace {

std::string dump(const nlohmann::json& j) {
    // Invalid UTF-8 in a string must not turn a response into an exception.
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string Request::header(std::string_view lower_name) const {
    auto it = headers.find(std::string(lower_name));
    return it == headers.end() ? std::string{} : it->second;
}

std::optional<std::string> Request::param(std::string_view name) const {
    auto it = query.find(std::string(name));
    if (it == query.end()) return std::nullopt;
    return it->second;
}

Response Response::json(int status, const nlohmann::json& body) {
    Response r;
    r.status = status;
    r.body = dump(body);
    return r;
}

Response Response::error(int status, std::string_view code, std::string_view detail, const nlohmann::json& extra) {
    nlohmann::json body = nlohmann::json::object();
    if (extra.is_object()) body = extra;
    body["error"] = code;
    body["detail"] = detail;
    return json(status, body);
}

Response Response::text(int status, std::string body, std::string content_type) {
    Response r;
    r.status = status;
    r.body = std::move(body);
    r.content_type = std::move(content_type);
    return r;
}

nlohmann::json ClientResponse::json(int max_depth) const {
    auto r = parse_json(body, "the answer", max_depth);
    return r ? std::move(*r) : nlohmann::json(nlohmann::json::value_t::discarded);
}

std::string ClientResponse::header(std::string_view lower_name) const {
    auto it = headers.find(std::string(lower_name));
    return it == headers.end() ? std::string{} : it->second;
}

}  // namespace engram::http
