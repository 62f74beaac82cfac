#pragma once
// The web chat's page and assets (interfaces/gateway/web/*), embedded at build time by
// cmake/embed_web.cmake so the binary is self-contained.
#include <span>
#include <string_view>

namespace engram::gateway {

struct WebAsset {
    std::string_view path;  // "/" for index.html, "/static/<name>" for the others
    std::string_view content_type;
    std::string_view body;
};

std::span<const WebAsset> web_assets();

}  // namespace engram::gateway
