#include "engram/http/guard.h"

#include "engram/config/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>

namespace engram::http {
namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The host of a Host header value, lower-cased, without port, brackets or a trailing dot; nullopt
// when malformed.
std::optional<std::string> host_of(std::string_view value) {
    value = trim(value);
    std::string host;
    if (!value.empty() && value.front() == '[') {
        auto close = value.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        auto rest = value.substr(close + 1);
        if (!rest.empty() && rest.front() != ':') return std::nullopt;
        host = std::string(value.substr(1, close - 1));
        in6_addr a6{};
        if (inet_pton(AF_INET6, host.c_str(), &a6) != 1) return std::nullopt;
        return "[" + lower(host) + "]";
    }
    auto colon = value.find(':');
    if (colon != std::string_view::npos) {
        auto port = value.substr(colon + 1);
        if (!std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
        value = value.substr(0, colon);
    }
    host = lower(value);
    if (!host.empty() && host.back() == '.') host.pop_back();
    if (host.empty()) return std::nullopt;
    return host;
}

bool is_loopback_host(const std::string& host) {
    if (host == "localhost" || ends_with(host, ".localhost")) return true;
    if (host.front() == '[') {
        in6_addr a6{};
        std::string inner = host.substr(1, host.size() - 2);
        if (inet_pton(AF_INET6, inner.c_str(), &a6) != 1) return false;
        if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
        // ::ffff:127.x.x.x
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    in_addr a4{};
    if (inet_pton(AF_INET, host.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    return false;
}

bool valid_host_name(std::string_view n) {
    if (n.rfind("*.", 0) == 0) n.remove_prefix(2);
    if (n.empty() || n.size() > 253 || n.front() == '.' || n.front() == '-') return false;
    return std::all_of(n.begin(), n.end(),
                       [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.'; });
}

}  // namespace

Guard::Guard(GuardOptions opts) : opts_(std::move(opts)) {
    for (auto& h : opts_.allowed_hosts) h = lower(h);
}

bool Guard::host_allowed(std::string_view host_header) const {
    if (trim(host_header).empty()) return true;
    auto host = host_of(host_header);
    if (!host) return false;
    if (is_loopback_host(*host)) return true;
    for (const auto& a : opts_.allowed_hosts) {
        if (a.rfind("*.", 0) == 0) {
            if (host->size() > a.size() - 1 && ends_with(*host, std::string_view(a).substr(1))) return true;
        } else if (*host == a) {
            return true;
        }
    }
    return false;
}

std::optional<Response> Guard::check_host(const Request& req) const {
    if (has_token()) return std::nullopt;
    auto host = req.header("host");
    if (host_allowed(host)) return std::nullopt;
    std::string shown = host.substr(0, 100);
    return Response::error(421, "host_not_allowed",
                           "Host '" + shown +
                               "' is not a loopback name and not in ENGRAM_ALLOWED_HOSTS; without ENGRAM_API_TOKEN this "
                               "service answers only requests addressed to localhost, 127.0.0.1 or [::1]");
}

std::optional<Response> Guard::check_token(const Request& req, bool query_token_on_get) const {
    if (!has_token()) return std::nullopt;
    auto h = req.header("authorization");
    if (h.rfind("Bearer ", 0) == 0 && constant_time_equal(std::string_view(h).substr(7), opts_.token)) return std::nullopt;
    if (query_token_on_get && req.method == "GET")
        if (auto t = req.param("access_token"); t && constant_time_equal(*t, opts_.token)) return std::nullopt;
    auto r = Response::error(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required");
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
    return r;
}

bool is_json_content_type(std::string_view ct) {
    auto semi = ct.find(';');
    if (lower(trim(ct.substr(0, semi))) != "application/json") return false;
    while (semi != std::string_view::npos) {
        ct = ct.substr(semi + 1);
        semi = ct.find(';');
        auto param = trim(ct.substr(0, semi));
        if (param.empty()) continue;
        auto eq = param.find('=');
        if (eq == std::string_view::npos) return false;
        if (lower(trim(param.substr(0, eq))) != "charset") continue;
        auto v = lower(trim(param.substr(eq + 1)));
        if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
        if (v != "utf-8" && v != "utf8") return false;  // JSON is UTF-8 (RFC 8259)
    }
    return true;
}

std::optional<Response> require_json(const Request& req) {
    auto ct = req.header("content-type");
    if (is_json_content_type(ct)) return std::nullopt;
    return Response::error(415, "unsupported_media_type",
                           ct.empty() ? "send the body as Content-Type: application/json (no Content-Type was given)"
                                      : "send the body as Content-Type: application/json (got '" + ct.substr(0, 100) + "')");
}

std::optional<std::vector<std::string>> parse_host_list(std::string_view list) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= list.size()) {
        auto comma = list.find(',', start);
        auto item = trim(list.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
        if (!item.empty()) {
            if (!valid_host_name(item)) return std::nullopt;
            out.push_back(lower(item));
        }
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    return out;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void add_guard_settings(config::Spec& spec) {
    spec.add({"ENGRAM_ALLOWED_HOSTS",
              "host names (comma-separated, *.domain for subdomains) served besides localhost, 127.0.0.1 and [::1] "
              "while ENGRAM_API_TOKEN is unset (e.g. the name a reverse proxy forwards)",
              "", false, [](const std::string& v) -> std::optional<std::string> {
                  if (parse_host_list(v)) return std::nullopt;
                  return "must be a comma-separated list of host names (no scheme, no port), e.g. engram.lan,*.example.com";
              }});
}

GuardOptions guard_options(const config::Values& v) {
    GuardOptions o;
    o.token = v.get("ENGRAM_API_TOKEN");
    o.allowed_hosts = parse_host_list(v.get("ENGRAM_ALLOWED_HOSTS")).value_or(std::vector<std::string>{});
    return o;
}

}  // namespace engram::http
