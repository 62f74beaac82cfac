#pragma once
// Every setting is declared once, with its description and default; the same declarations
// validate the environment at start (all problems reported at once, in one line), print --help and
// generate .env.example.
#include "engram/core/result.h"

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace engram::config {

// Returns an error sentence when the value is invalid, nullopt when it is fine.
using Check = std::function<std::optional<std::string>(const std::string&)>;

struct Setting {
    std::string name;
    std::string description;
    std::string default_value;  // "" = empty / unset
    bool required = false;
    Check check;          // applied to non-empty values
    bool secret = false;  // never printed
};

class Values {
public:
    const std::string& get(const std::string& name) const;
    bool has(const std::string& name) const { return !get(name).empty(); }
    std::int64_t get_int(const std::string& name) const;
    void set(const std::string& name, std::string v) { v_[name] = std::move(v); }

private:
    std::map<std::string, std::string> v_;
};

using Env = std::function<std::optional<std::string>(const std::string&)>;
Env process_env();

class Spec {
public:
    Spec& add(Setting s);
    // Reads every setting; the error's detail lists every problem, e.g.
    // "invalid configuration: LOG_LEVEL must be one of trace|debug|info|warn|error (got 'loud'); DATABASE_URL is required"
    Result<Values> load(const Env& env = process_env()) const;
    std::string help() const;         // one paragraph per setting
    std::string env_example() const;  // KEY=default lines with # descriptions
    const std::vector<Setting>& settings() const { return s_; }

private:
    std::vector<Setting> s_;
};

// Common checks.
Check one_of(std::vector<std::string> allowed);
Check int_range(std::int64_t lo, std::int64_t hi);
Check url(std::vector<std::string> schemes);
Check listen_address();  // host:port

struct HostPort {
    std::string host;
    std::uint16_t port;
};
std::optional<HostPort> parse_listen(const std::string& s);
bool is_loopback(const std::string& host);

// The settings every service shares: LOG_LEVEL, LOG_FORMAT.
void add_logging(Spec& spec);
// A service bound to a non-loopback address without ENGRAM_API_TOKEN refuses to start: anyone who
// can reach it could write to the log.
Status check_exposure(const std::string& listen_setting, const Values& v);

}  // namespace engram::config
