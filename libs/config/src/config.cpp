#include "engram/config/config.h"

#include "engram/core/text.h"

#include <cstdlib>
#include <sstream>
#include <utility>

namespace engram::config {

const std::string& Values::get(const std::string& name) const {
    static const std::string empty;
    auto it = v_.find(name);
    return it == v_.end() ? empty : it->second;
}

std::int64_t Values::get_int(const std::string& name) const { return std::stoll(get(name)); }

Env process_env() {
    return [](const std::string& k) -> std::optional<std::string> {
        const char* v = std::getenv(k.c_str());
        if (!v) return std::nullopt;
        return std::string(v);
    };
}

Spec& Spec::add(Setting s) {
    s_.push_back(std::move(s));
    return *this;
}

Result<Values> Spec::load(const Env& env) const {
    Values out;
    std::vector<std::string> problems;
    for (const auto& s : s_) {
        auto v = env(s.name);
        std::string value = v && !v->empty() ? *v : s.default_value;
        if (value.empty()) {
            if (s.required) problems.push_back(s.name + " is required (" + s.description + ")");
        } else if (s.check) {
            if (auto why = s.check(value)) {
                problems.push_back(s.name + " " + *why + (s.secret ? "" : " (got '" + redact_credentials(value) + "')"));
            }
        }
        out.set(s.name, value);
    }
    if (!problems.empty()) {
        std::string msg = "invalid configuration: ";
        for (std::size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
        return Error::make("invalid_config", msg);
    }
    return out;
}

std::string Spec::help() const {
    std::ostringstream os;
    os << "Configuration (environment variables):\n";
    for (const auto& s : s_) {
        os << "  " << s.name << (s.required ? " (required)" : "") << "\n      " << s.description;
        if (!s.default_value.empty()) os << " [default: " << s.default_value << "]";
        os << "\n";
    }
    return os.str();
}

std::string Spec::env_example() const {
    std::ostringstream os;
    for (const auto& s : s_) os << "# " << s.description << "\n" << s.name << "=" << (s.secret ? "" : s.default_value) << "\n";
    return os.str();
}

Check one_of(std::vector<std::string> allowed) {
    return [allowed = std::move(allowed)](const std::string& v) -> std::optional<std::string> {
        for (const auto& a : allowed)
            if (a == v) return std::nullopt;
        std::string all;
        for (std::size_t i = 0; i < allowed.size(); ++i) all += (i ? "|" : "") + allowed[i];
        return "must be one of " + all;
    };
}

Check int_range(std::int64_t lo, std::int64_t hi) {
    return [lo, hi](const std::string& v) -> std::optional<std::string> {
        std::size_t used = 0;
        long long n = 0;
        try {
            n = std::stoll(v, &used);
        } catch (...) {
            used = 0;
        }
        if (used != v.size() || n < lo || n > hi)
            return "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi);
        return std::nullopt;
    };
}

Check url(std::vector<std::string> schemes) {
    return [schemes = std::move(schemes)](const std::string& v) -> std::optional<std::string> {
        auto p = v.find("://");
        if (p != std::string::npos && p + 3 < v.size()) {
            auto scheme = v.substr(0, p);
            for (const auto& s : schemes)
                if (s == scheme) return std::nullopt;
        }
        std::string all;
        for (std::size_t i = 0; i < schemes.size(); ++i) all += (i ? ", " : "") + schemes[i] + "://";
        return "must be a URL starting with " + all;
    };
}

std::optional<HostPort> parse_listen(const std::string& s) {
    auto c = s.rfind(':');
    if (c == std::string::npos || c == 0 || c + 1 >= s.size()) return std::nullopt;
    std::string host = s.substr(0, c);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    auto ps = s.substr(c + 1);
    for (char ch : ps)
        if (ch < '0' || ch > '9') return std::nullopt;
    if (ps.size() > 5) return std::nullopt;
    long port = std::stol(ps);
    if (port > 65535) return std::nullopt;
    return HostPort{host, static_cast<std::uint16_t>(port)};
}

Check listen_address() {
    return [](const std::string& v) -> std::optional<std::string> {
        if (parse_listen(v)) return std::nullopt;
        return "must be host:port, e.g. 127.0.0.1:8080";
    };
}

bool is_loopback(const std::string& host) { return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0; }

void add_logging(Spec& spec) {
    spec.add({"LOG_LEVEL", "log level: trace|debug|info|warn|error", "info", false,
              one_of({"trace", "debug", "info", "warn", "error"})});
    spec.add({"LOG_FORMAT", "log format: text|json", "text", false, one_of({"text", "json"})});
}

Status check_exposure(const std::string& listen_setting, const Values& v) {
    auto hp = parse_listen(v.get(listen_setting));
    if (hp && !is_loopback(hp->host) && !v.has("ENGRAM_API_TOKEN"))
        return Error::make("invalid_config", listen_setting + "=" + v.get(listen_setting) +
                                                 " is not a loopback address: set ENGRAM_API_TOKEN to expose the service");
    return ok();
}

}  // namespace engram::config
