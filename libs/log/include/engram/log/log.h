#pragma once
// Process-wide logging setup. Every library asks for its own named logger (get("store")), so a line
// says which part of the process wrote it.
#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

namespace engram::log {

// level: trace|debug|info|warn|error; format: text|json (one JSON object per line). Safe to call again.
void init(std::string_view level, std::string_view format);
std::shared_ptr<spdlog::logger> get(const std::string& name);

}  // namespace engram::log
