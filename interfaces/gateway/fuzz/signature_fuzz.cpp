// Fuzz target over the webhook signature code (signature.h): secrets parsing, both schemes' header
// parsing and verification, base64. A plain libFuzzer entry point: the fuzz preset links it with
// -fsanitize=fuzzer, and otherwise a unit test runs it over the committed corpus (engram_fuzzer).
//
// Input: newline-separated fields, then the body (the rest):
//   WEBHOOK_SECRETS value | now (Unix s) | X-Signature-256 | X-Webhook-Timestamp | webhook-id |
//   webhook-timestamp | webhook-signature | body...
// Besides not crashing, a verification that succeeds must be one that should: the invariants below
// recompute the signature independently of the parser and abort() when they disagree.
#include "signature.h"

#include "engram/core/text.h"

#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

using namespace engram::gateway;

namespace {

constexpr std::int64_t kSkew = 300;

std::int64_t number(std::string_view s, std::int64_t fallback) {
    if (s.empty() || s.size() > 12) return fallback;
    std::int64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return fallback;
        v = v * 10 + (c - '0');
    }
    return v;
}

void check(bool ok) {
    if (!ok) std::abort();
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view in(reinterpret_cast<const char*>(data), size);
    std::vector<std::string> f;
    while (f.size() < 7) {
        auto nl = in.find('\n');
        f.emplace_back(in.substr(0, nl));
        in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    }
    const std::string body(in);
    const std::int64_t now = number(f[1], 1614265330);
    std::map<std::string, std::string> h = {{"x-signature-256", f[2]},
                                            {"x-webhook-timestamp", f[3]},
                                            {"webhook-id", f[4]},
                                            {"webhook-timestamp", f[5]},
                                            {"webhook-signature", f[6]}};
    HeaderFn header = [&](std::string_view name) {
        auto it = h.find(std::string(name));
        return it == h.end() ? std::string() : it->second;
    };

    // base64: what decodes re-encodes to the same text.
    if (auto d = base64_decode(f[0])) check(base64_encode(*d) == f[0]);

    auto secrets = parse_secrets(f[0]);
    if (!secrets) return 0;
    for (const auto& [source, secret] : *secrets) {
        auto v = verify_webhook(secret, header, body, now, kSkew);
        if (!v) {
            check(v.error().code == "unauthorized" && !v.error().detail.empty());
            continue;
        }
        check(v->timestamp >= now - kSkew && v->timestamp <= now + kSkew);
        if (secret.scheme == Scheme::standard_webhooks) {
            check(v->delivery_id == engram::trim(h["webhook-id"]));
            const std::string expected =
                hmac_sha256_base64(secret.key, v->delivery_id + "." + engram::trim(h["webhook-timestamp"]) + "." + body);
            check(v->signature == expected);
            check(h["webhook-signature"].find("v1," + expected) != std::string::npos);
        } else {
            const std::string expected = hmac_sha256_hex(secret.key, engram::trim(h["x-webhook-timestamp"]) + "." + body);
            check(v->signature == expected);
            check(lower(h["x-signature-256"]).find(expected) != std::string::npos);
        }
    }
    ReplayGuard g(4);
    for (const auto& [source, secret] : *secrets) g.admit(source, f[2], f[4], number(f[3], now), kSkew, now);
    check(g.size() <= 4);
    return 0;
}
