#pragma once
// Signed webhooks: who may write WebhookReceived on webhook:<source>, and how a captured request is
// kept from being stored again. Two schemes, chosen per source by the form of its secret
// (WEBHOOK_SECRETS=github=s1,billing=whsec_<base64>):
//
//   - timestamped HMAC (a plain secret): `X-Webhook-Timestamp: <unix s>` and
//     `X-Signature-256: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`, like Stripe and
//     Slack; the delivery id (X-Delivery-Id, X-GitHub-Delivery, else the body's hash) is not signed;
//   - Standard Webhooks (a `whsec_<base64>` secret, the key being the decoded bytes): `webhook-id`,
//     `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`
//     (several space-separated signatures allowed); `webhook-id` is the delivery id.
//
// Either way the timestamp is signed and must be within the allowed skew of now, so a request
// replayed later with a fresh timestamp no longer verifies. Pure functions, no I/O: the fuzz target
// (fuzz/signature_fuzz.cpp) drives them directly.
#include "engram/core/result.h"

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace engram::gateway {

std::string hmac_sha256_hex(std::string_view key, std::string_view data);
std::string hmac_sha256_base64(std::string_view key, std::string_view data);
std::string sha256_hex(std::string_view data);
bool constant_time_equal(std::string_view a, std::string_view b);
std::string base64_encode(std::string_view bytes);
// Standard (RFC 4648 §4) base64 with '=' padding; nullopt when malformed.
std::optional<std::string> base64_decode(std::string_view text);

enum class Scheme { timestamped_hmac, standard_webhooks };

struct WebhookSecret {
    Scheme scheme = Scheme::timestamped_hmac;
    std::string key;  // the HMAC key: the secret as written, or the bytes of a whsec_ secret
};

// "source=secret,other=whsec_<base64>" -> the sources and their secrets; an error naming the first
// malformed item (never its secret).
Result<std::map<std::string, WebhookSecret>> parse_secrets(const std::string& s);

// What a verified request carries.
struct Verified {
    std::string delivery_id;  // Standard Webhooks: webhook-id; timestamped HMAC: "" (the caller picks one)
    std::int64_t timestamp = 0;
    std::string signature;  // the matching signature as sent (the replay guard's key)
};

// Header lookup by lower-case name; "" when absent.
using HeaderFn = std::function<std::string(std::string_view lower_name)>;

// Checks a request against its source's secret. Errors have code "unauthorized" and a detail naming
// the header at fault (X-Signature-256 / X-Webhook-Timestamp, webhook-signature / webhook-id /
// webhook-timestamp) and, for a timestamp outside the window, the word "Timestamp".
Result<Verified> verify_webhook(const WebhookSecret& secret, const HeaderFn& header, std::string_view body, std::int64_t now_s,
                                std::int64_t max_skew_s);

// Remembers, for as long as a timestamp stays inside the window, which delivery id each verified
// signature came with. The timestamped-HMAC scheme does not sign the delivery id, so a capture
// replayed inside the window under a new id would otherwise be stored as a new delivery; the same
// signature with the same id is the sender's own retry and passes. Thread-safe; bounded: entries
// leave when their window has passed, and beyond `capacity` the oldest go first.
class ReplayGuard {
public:
    explicit ReplayGuard(std::size_t capacity = 100000) : capacity_(capacity) {}
    // False when `signature` of `source` was seen with another delivery id while a request signed at
    // `timestamp` is still accepted (until timestamp + max_skew_s).
    bool admit(const std::string& source, const std::string& signature, const std::string& delivery_id, std::int64_t timestamp,
               std::int64_t max_skew_s, std::int64_t now_s);
    std::size_t size() const;

private:
    struct Seen {
        std::string delivery_id;
        std::int64_t expires;
    };
    mutable std::mutex mu_;
    std::size_t capacity_;
    std::unordered_map<std::string, Seen> seen_;
    std::deque<std::pair<std::int64_t, std::string>> order_;  // (expires, key), oldest first
};

}  // namespace engram::gateway
