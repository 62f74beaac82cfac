#pragma once
// The request guard every engram HTTP service puts in front of its routes, so that nothing outside the
// machine (a web page the user visits, a DNS-rebound name) can drive or read a local stack:
//
//   - the Host allow-list: without an API token, only requests whose Host is a loopback name
//     (localhost, *.localhost, 127.x.x.x, [::1], any port) or an allowed name (ENGRAM_ALLOWED_HOSTS)
//     are served: a page that re-points its own domain at 127.0.0.1 sends its own name in Host;
//   - the bearer token (`Authorization: Bearer <token>`, compared in constant time);
//   - JSON bodies only: a browser sends a cross-site POST without a CORS preflight only as
//     text/plain, form or multipart, never as application/json.
//
// Each check returns the refusal to send, or nullopt when the request may go on.
#include "engram/http/server.h"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram::config {
class Spec;
class Values;
}  // namespace engram::config

namespace engram::http {

struct GuardOptions {
    std::string token;                       // "" = no token: the Host allow-list applies
    std::vector<std::string> allowed_hosts;  // extra names: "engram.example.com" or "*.example.com"
};

class Guard {
public:
    Guard() = default;
    explicit Guard(GuardOptions opts);

    bool has_token() const { return !opts_.token.empty(); }

    // Without a token: 421 {"error":"host_not_allowed"} unless the Host is loopback or allowed.
    // With a token the token is what protects the service, and any Host is served.
    std::optional<Response> check_host(const Request& req) const;
    // With a token: 401 {"error":"unauthorized"} unless `Authorization: Bearer <token>` (or, when
    // `query_token_on_get`, `?access_token=` on a GET: browsers' EventSource cannot set headers).
    std::optional<Response> check_token(const Request& req, bool query_token_on_get = false) const;

    // True when `host_header` (a Host value: name, name:port, [v6]:port) names a loopback host or an
    // allowed one. An empty Host (HTTP/1.0 clients; never a browser) is allowed.
    bool host_allowed(std::string_view host_header) const;

private:
    GuardOptions opts_;
};

// A POST body must be declared JSON: 415 {"error":"unsupported_media_type"} unless the Content-Type
// is application/json, optionally with parameters (a charset, if any, must be utf-8).
std::optional<Response> require_json(const Request& req);
bool is_json_content_type(std::string_view content_type);

// "a.example.com, *.example.org" -> the names, lower-cased; nullopt when one is not a host name
// (letters, digits, '-', '.', an optional leading "*.", no port, no scheme).
std::optional<std::vector<std::string>> parse_host_list(std::string_view list);

bool constant_time_equal(std::string_view a, std::string_view b);

// Declares ENGRAM_ALLOWED_HOSTS, which every HTTP service reads (ENGRAM_API_TOKEN each service
// declares itself, with what the token means to it).
void add_guard_settings(config::Spec& spec);
// ENGRAM_API_TOKEN and ENGRAM_ALLOWED_HOSTS from loaded settings.
GuardOptions guard_options(const config::Values& v);

}  // namespace engram::http
