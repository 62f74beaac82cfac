#include "signature.h"

#include "engram/core/text.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdlib>

namespace engram::gateway {
namespace {

std::string hex(const unsigned char* p, unsigned int n) {
    static const char* h = "0123456789abcdef";
    std::string out;
    out.reserve(n * 2);
    for (unsigned int i = 0; i < n; ++i) {
        out.push_back(h[p[i] >> 4]);
        out.push_back(h[p[i] & 15]);
    }
    return out;
}

std::string hmac_raw(std::string_view key, std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         md, &n);
    return std::string(reinterpret_cast<const char*>(md), n);
}

Error unauthorized(std::string detail) { return Error::make("unauthorized", std::move(detail)); }

// Unix seconds as decimal digits (a leading '-' is not a timestamp anyone sends); nullopt otherwise.
std::optional<std::int64_t> parse_unix(std::string_view s) {
    if (s.empty() || s.size() > 12) return std::nullopt;
    std::int64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + (c - '0');
    }
    return v;
}

Result<std::int64_t> check_time(std::string_view header_name, const std::string& text, std::int64_t now_s,
                                std::int64_t max_skew_s) {
    auto ts = parse_unix(text);
    if (!ts) return unauthorized("missing or malformed " + std::string(header_name) + " header (Unix seconds)");
    if (std::llabs(now_s - *ts) > max_skew_s)
        return unauthorized(std::string(header_name) + " is more than " + std::to_string(max_skew_s) +
                            " s away from now (a replay, or a clock problem): Timestamp refused");
    return *ts;
}

Result<Verified> verify_timestamped(const std::string& key, const HeaderFn& header, std::string_view body, std::int64_t now_s,
                                    std::int64_t max_skew_s) {
    auto sig = trim(header("x-signature-256"));
    if (sig.rfind("sha256=", 0) != 0 || sig.size() != 7 + 64)
        return unauthorized("missing or malformed X-Signature-256 header (expected sha256=<64 hex digits>)");
    std::string given = sig.substr(7);
    for (auto& c : given) c = static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
    const std::string ts_text = trim(header("x-webhook-timestamp"));
    if (!parse_unix(ts_text)) return unauthorized("missing or malformed X-Webhook-Timestamp header (Unix seconds)");
    std::string signed_text = ts_text + ".";
    signed_text.append(body);
    if (!constant_time_equal(given, hmac_sha256_hex(key, signed_text)))
        return unauthorized("the X-Signature-256 signature does not match HMAC-SHA256(secret, \"<X-Webhook-Timestamp>.<body>\")");
    auto ts = check_time("X-Webhook-Timestamp", ts_text, now_s, max_skew_s);
    if (!ts) return ts.error();
    return Verified{"", *ts, given};
}

Result<Verified> verify_standard(const std::string& key, const HeaderFn& header, std::string_view body, std::int64_t now_s,
                                 std::int64_t max_skew_s) {
    const std::string id = trim(header("webhook-id"));
    if (id.empty() || id.size() > 256) return unauthorized("missing webhook-id header (1 to 256 characters)");
    const std::string ts_text = trim(header("webhook-timestamp"));
    if (!parse_unix(ts_text)) return unauthorized("missing or malformed webhook-timestamp header (Unix seconds)");
    const std::string sigs = header("webhook-signature");
    if (trim(sigs).empty()) return unauthorized("missing webhook-signature header (expected v1,<base64>)");
    std::string signed_text = id + "." + ts_text + ".";
    signed_text.append(body);
    const std::string expected = hmac_sha256_base64(key, signed_text);
    std::string_view rest = sigs;
    bool any_v1 = false;
    std::string match;
    while (!rest.empty()) {
        auto sp = rest.find(' ');
        auto item = rest.substr(0, sp);
        rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
        if (item.rfind("v1,", 0) != 0) continue;  // other versions (v1a: asymmetric) are not ours
        any_v1 = true;
        // Every candidate is compared, so the time taken does not say which one matched.
        if (constant_time_equal(item.substr(3), expected) && match.empty()) match = std::string(item.substr(3));
    }
    if (!any_v1) return unauthorized("the webhook-signature header holds no v1,<base64> signature");
    if (match.empty())
        return unauthorized("no webhook-signature matches HMAC-SHA256(key, \"<webhook-id>.<webhook-timestamp>.<body>\")");
    auto ts = check_time("webhook-timestamp", ts_text, now_s, max_skew_s);
    if (!ts) return ts.error();
    return Verified{id, *ts, match};
}

}  // namespace

std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
    auto raw = hmac_raw(key, data);
    return hex(reinterpret_cast<const unsigned char*>(raw.data()), static_cast<unsigned int>(raw.size()));
}

std::string hmac_sha256_base64(std::string_view key, std::string_view data) { return base64_encode(hmac_raw(key, data)); }

std::string sha256_hex(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
    return hex(md, n);
}

bool constant_time_equal(std::string_view a, std::string_view b) {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string base64_encode(std::string_view bytes) {
    std::string out(4 * ((bytes.size() + 2) / 3), '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(bytes.data()),
                            static_cast<int>(bytes.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
    // Strict: a multiple of 4 characters of the standard alphabet, '=' only as the final padding,
    // canonical (the fuzz target found that a lenient decoder takes several texts for one key).
    if (text.size() % 4 != 0) return std::nullopt;
    auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        const bool last = i + 4 == text.size();
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; ++k) {
            char c = text[i + static_cast<std::size_t>(k)];
            if (c == '=' && last && k >= 2) {
                ++pad;
                v[k] = 0;
                continue;
            }
            if (pad > 0) return std::nullopt;  // data after padding
            v[k] = value(c);
            if (v[k] < 0) return std::nullopt;
        }
        // Canonical only: the bits a padded group leaves unused must be zero (one text per key).
        if ((pad == 1 && (v[2] & 0x3) != 0) || (pad == 2 && (v[1] & 0xf) != 0)) return std::nullopt;
        std::uint32_t n =
            (std::uint32_t(v[0]) << 18) | (std::uint32_t(v[1]) << 12) | (std::uint32_t(v[2]) << 6) | std::uint32_t(v[3]);
        out.push_back(static_cast<char>((n >> 16) & 0xff));
        if (pad < 2) out.push_back(static_cast<char>((n >> 8) & 0xff));
        if (pad < 1) out.push_back(static_cast<char>(n & 0xff));
    }
    return out;
}

Result<std::map<std::string, WebhookSecret>> parse_secrets(const std::string& s) {
    std::map<std::string, WebhookSecret> out;
    std::size_t i = 0, n = 0;
    while (i < s.size()) {
        ++n;
        auto comma = s.find(',', i);
        auto item = s.substr(i, comma == std::string::npos ? std::string::npos : comma - i);
        auto eq = item.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 >= item.size())
            return Error::make("invalid_config", "item " + std::to_string(n) + " is not source=secret");
        const auto source = item.substr(0, eq);
        auto secret = item.substr(eq + 1);
        WebhookSecret ws;
        if (secret.rfind("whsec_", 0) == 0) {
            auto key = base64_decode(secret.substr(6));
            if (!key || key->empty())
                return Error::make("invalid_config", "the secret of source '" + source +
                                                         "' starts with whsec_ (Standard Webhooks) "
                                                         "but the rest is not base64");
            ws.scheme = Scheme::standard_webhooks;
            ws.key = std::move(*key);
        } else {
            ws.key = std::move(secret);
        }
        out[source] = std::move(ws);
        if (comma == std::string::npos) break;
        i = comma + 1;
    }
    return out;
}

Result<Verified> verify_webhook(const WebhookSecret& secret, const HeaderFn& header, std::string_view body, std::int64_t now_s,
                                std::int64_t max_skew_s) {
    if (secret.scheme == Scheme::standard_webhooks) return verify_standard(secret.key, header, body, now_s, max_skew_s);
    return verify_timestamped(secret.key, header, body, now_s, max_skew_s);
}

bool ReplayGuard::admit(const std::string& source, const std::string& signature, const std::string& delivery_id,
                        std::int64_t timestamp, std::int64_t max_skew_s, std::int64_t now_s) {
    std::lock_guard lk(mu_);
    while (!order_.empty() && (order_.front().first <= now_s || seen_.size() > capacity_)) {
        auto it = seen_.find(order_.front().second);
        if (it != seen_.end() && it->second.expires == order_.front().first) seen_.erase(it);
        order_.pop_front();
    }
    std::string key = source + "\n" + signature;
    if (auto it = seen_.find(key); it != seen_.end() && it->second.expires > now_s) return it->second.delivery_id == delivery_id;
    const std::int64_t expires = timestamp + max_skew_s + 1;
    seen_[key] = Seen{delivery_id, expires};
    order_.emplace_back(expires, std::move(key));
    while (seen_.size() > capacity_ && !order_.empty()) {
        auto it = seen_.find(order_.front().second);
        if (it != seen_.end() && it->second.expires == order_.front().first) seen_.erase(it);
        order_.pop_front();
    }
    return true;
}

std::size_t ReplayGuard::size() const {
    std::lock_guard lk(mu_);
    return seen_.size();
}

}  // namespace engram::gateway
