#include <catch2/catch.hpp>

#include "app.h"
#include "signature.h"
#include "webchat_cookie.h"
#include "webchat_limits.h"

#include <map>

using namespace engram::gateway;

namespace {

HeaderFn headers(std::map<std::string, std::string> h) {
    return [h = std::move(h)](std::string_view name) {
        auto it = h.find(std::string(name));
        return it == h.end() ? std::string() : it->second;
    };
}

}  // namespace

TEST_CASE("HMAC-SHA256 matches the RFC 4231 test vector", "[unit][gateway]") {
    // RFC 4231 test case 2.
    CHECK(hmac_sha256_hex("Jefe", "what do ya want for nothing?") ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("base64 is strict RFC 4648", "[unit][gateway]") {
    CHECK(base64_encode("") == "");
    CHECK(base64_encode("f") == "Zg==");
    CHECK(base64_encode("foobar") == "Zm9vYmFy");
    CHECK(*base64_decode("Zm9vYg==") == "foob");
    CHECK(*base64_decode("Zm9vYmE=") == "fooba");
    CHECK(*base64_decode("") == "");
    for (const char* bad : {"Zg=", "Zg", "Z===", "Zm9v!mFy", "Zg==Zg==", "Zm=v", "Zm9vYmFy\n", "Zh==", "Zm9="}) {
        INFO(bad);
        CHECK_FALSE(base64_decode(bad));
    }
}

TEST_CASE("constant-time comparison and secrets parsing", "[unit][gateway]") {
    CHECK(constant_time_equal("abc", "abc"));
    CHECK_FALSE(constant_time_equal("abc", "abd"));
    CHECK_FALSE(constant_time_equal("abc", "abcd"));
    auto s = parse_secrets("github=s1,stripe=s2,billing=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    REQUIRE(s);
    CHECK(s->at("github").key == "s1");
    CHECK(s->at("github").scheme == Scheme::timestamped_hmac);
    CHECK(s->at("stripe").key == "s2");
    CHECK(s->at("billing").scheme == Scheme::standard_webhooks);
    CHECK(s->at("billing").key == *base64_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    CHECK(parse_secrets("padded=whsec_Zm9vYg==")->at("padded").key == "foob");  // '=' of base64 after the first '='
    CHECK_FALSE(parse_secrets("github"));
    CHECK_FALSE(parse_secrets("=x"));
    CHECK_FALSE(parse_secrets("a=1,b="));
    auto bad = parse_secrets("ok=1,billing=whsec_not*base64");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().detail.find("billing") != std::string::npos);
    CHECK(bad.error().detail.find("not*base64") == std::string::npos);  // a secret is never echoed
}

TEST_CASE("Standard Webhooks: the published test vector verifies, and nothing else does", "[unit][gateway]") {
    // The test vector of the Standard Webhooks reference libraries.
    auto secret = parse_secrets("s=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")->at("s");
    const std::string body = R"({"test": 2432232314})";
    std::map<std::string, std::string> h = {{"webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"},
                                            {"webhook-timestamp", "1614265330"},
                                            {"webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}};
    auto ok = verify_webhook(secret, headers(h), body, 1614265330, 300);
    INFO((ok ? "" : ok.error().detail));
    REQUIRE(ok);
    CHECK(ok->delivery_id == "msg_p5jXN8AQM9LWM0D4loKWxJek");
    CHECK(ok->timestamp == 1614265330);
    // Several signatures (a key rotation): any v1 one may match; other versions are skipped.
    h["webhook-signature"] =
        "v1a,Zm9v v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    CHECK(verify_webhook(secret, headers(h), body, 1614265330, 300));
    auto refused = [&](std::map<std::string, std::string> hh, const std::string& b, std::int64_t now, const std::string& part) {
        auto r = verify_webhook(secret, headers(hh), b, now, 300);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == "unauthorized");
        INFO(r.error().detail);
        CHECK(r.error().detail.find(part) != std::string::npos);
    };
    h["webhook-signature"] = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    refused(h, body + " ", 1614265330, "no webhook-signature matches");
    auto other_id = h;
    other_id["webhook-id"] = "msg_other";
    refused(other_id, body, 1614265330, "no webhook-signature matches");
    auto later = h;
    later["webhook-timestamp"] = "1614265331";
    refused(later, body, 1614265330, "no webhook-signature matches");  // the timestamp is signed
    refused(h, body, 1614265330 + 301, "Timestamp");
    refused(h, body, 1614265330 - 301, "Timestamp");
    auto v1a = h;
    v1a["webhook-signature"] = "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    refused(v1a, body, 1614265330, "no v1");
    auto no_id = h;
    no_id.erase("webhook-id");
    refused(no_id, body, 1614265330, "webhook-id");
    auto bad_ts = h;
    bad_ts["webhook-timestamp"] = "soon";
    refused(bad_ts, body, 1614265330, "webhook-timestamp");
    auto no_sig = h;
    no_sig.erase("webhook-signature");
    refused(no_sig, body, 1614265330, "webhook-signature");
    // The plain scheme's headers do not open a Standard Webhooks source.
    refused({{"x-signature-256", "sha256=" + hmac_sha256_hex(secret.key, "1614265330." + body)},
             {"x-webhook-timestamp", "1614265330"}},
            body, 1614265330, "webhook-id");
}

TEST_CASE("timestamped HMAC: the timestamp is signed with the body", "[unit][gateway]") {
    WebhookSecret secret{Scheme::timestamped_hmac, "s3cret"};
    const std::string body = R"({"action":"opened"})";
    // Computed independently: python3 -c 'import hmac,hashlib; print(hmac.new(b"s3cret",
    //   b"1800000000.{\"action\":\"opened\"}", hashlib.sha256).hexdigest())'
    const std::string sig = "3b47b321e033a29778f0c4cfe56894494956572bcff20123ddae1439b6cb00b1";
    std::map<std::string, std::string> h = {{"x-signature-256", "sha256=" + sig}, {"x-webhook-timestamp", "1800000000"}};
    auto ok = verify_webhook(secret, headers(h), body, 1800000000, 300);
    REQUIRE(ok);
    CHECK(ok->delivery_id.empty());
    CHECK(ok->signature == sig);
    auto upper = h;
    for (auto& c : upper["x-signature-256"]) c = static_cast<char>(c >= 'a' && c <= 'f' ? c - 32 : c);
    upper["x-signature-256"].replace(0, 7, "sha256=");
    CHECK(verify_webhook(secret, headers(upper), body, 1800000000, 300));
    // A fresh timestamp on a captured request: the signature no longer matches.
    auto fresh = h;
    fresh["x-webhook-timestamp"] = "1800000600";
    auto r = verify_webhook(secret, headers(fresh), body, 1800000600, 300);
    REQUIRE_FALSE(r);
    CHECK(r.error().detail.find("does not match") != std::string::npos);
    // The old body-only signature is refused.
    auto body_only = h;
    body_only["x-signature-256"] = "sha256=" + hmac_sha256_hex("s3cret", body);
    CHECK_FALSE(verify_webhook(secret, headers(body_only), body, 1800000000, 300));
    // Signed correctly but too old: refused as a replay.
    auto old = verify_webhook(secret, headers(h), body, 1800000000 + 301, 300);
    REQUIRE_FALSE(old);
    CHECK(old.error().detail.find("Timestamp") != std::string::npos);
    for (const char* bad : {"", "sha256=", "sha1=abc", "sha256=xyz", "sha256= 3b47"}) {
        auto hh = h;
        hh["x-signature-256"] = bad;
        auto e = verify_webhook(secret, headers(hh), body, 1800000000, 300);
        REQUIRE_FALSE(e);
        CHECK(e.error().detail.find("X-Signature-256") != std::string::npos);
    }
}

TEST_CASE("the replay guard: a signature keeps its delivery id while it is accepted, and stays bounded", "[unit][gateway]") {
    ReplayGuard g(3);
    CHECK(g.admit("gh", "sig1", "d-1", 1000, 300, 1000));
    CHECK(g.admit("gh", "sig1", "d-1", 1000, 300, 1010));        // the sender's retry
    CHECK_FALSE(g.admit("gh", "sig1", "d-2", 1000, 300, 1020));  // the same capture, another id
    CHECK(g.admit("other", "sig1", "d-2", 1000, 300, 1020));     // per source
    CHECK(g.admit("gh", "sig1", "d-2", 1000, 300, 1301));        // past the window (the signature no longer verifies anyway)
    for (int i = 0; i < 10; ++i) CHECK(g.admit("gh", "s" + std::to_string(i), "d", 2000, 300, 2000));
    CHECK(g.size() <= 3);
}

TEST_CASE("the session cookie carries its issue time, expires, and is rotated", "[unit][gateway][webchat]") {
    CookieSigner s("a-test-secret-of-enough-length");
    const std::string uuid = "6f1c1a52-3d4e-4e1a-9d43-0d6b1f0f7a11";
    const std::int64_t t = 1'800'000'000;
    auto v = s.sign(uuid, t);
    CHECK(v.rfind(uuid + ".1800000000.", 0) == 0);
    CHECK(v.size() == 36 + 1 + 10 + 1 + 64);
    auto c = s.verify(v, t);
    REQUIRE(c);
    CHECK(c->uuid == uuid);
    CHECK_FALSE(CookieSigner::needs_rotation(*c, t + CookieSigner::kRotateAfter));
    CHECK(CookieSigner::needs_rotation(*c, t + CookieSigner::kRotateAfter + 1));
    CHECK(s.verify(v, t + CookieSigner::kMaxAge));
    CHECK_FALSE(s.verify(v, t + CookieSigner::kMaxAge + 1));                    // expired
    CHECK_FALSE(s.verify(v, t - CookieSigner::kFutureSkew - 1));                // issued in the future
    CHECK_FALSE(s.verify(uuid + ".1800000001." + v.substr(48), t));             // a younger issue time, same MAC
    CHECK_FALSE(CookieSigner("another-secret-of-enough-length").verify(v, t));  // another key
    CHECK_FALSE(s.verify(uuid + "." + v.substr(48), t));                        // the v1 form (no issue time)
    CHECK(s.from_header("theme=dark; engram_chat=garbage; engram_chat=" + v, t)->uuid == uuid);
    auto sc = CookieSigner::set_cookie(v, false);
    CHECK(sc == "engram_chat=" + v + "; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax");
    CHECK(CookieSigner::set_cookie(v, true).find("; Secure") != std::string::npos);
}

TEST_CASE("rate limiter: bursts, refill, Retry-After and a bounded map", "[unit][gateway][webchat]") {
    auto now = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
    RateLimiter rl(30, 3, 2, [&] { return now; });
    CHECK_FALSE(rl.take("a"));
    CHECK_FALSE(rl.take("a"));
    CHECK_FALSE(rl.take("a"));
    auto wait = rl.take("a");
    REQUIRE(wait);
    CHECK(wait->count() == 2);  // 30 a minute: one every 2 s
    now += std::chrono::seconds(2);
    CHECK_FALSE(rl.take("a"));
    CHECK(rl.take("a"));
    CHECK_FALSE(rl.take("b"));  // another key has its own bucket
    // A third key while two are busy is refused: the map never grows past its bound.
    CHECK(rl.take("c"));
    CHECK(rl.size() == 2);
    // Once a bucket has refilled it is forgotten, and a new key finds room.
    now += std::chrono::minutes(1);
    CHECK_FALSE(rl.take("c"));
    CHECK(rl.size() <= 2);
    RateLimiter off(0, 0, 1);
    for (int i = 0; i < 100; ++i) CHECK_FALSE(off.take("x" + std::to_string(i)));
    CHECK(off.size() == 0);
}

TEST_CASE("stream counter and address keys", "[unit][gateway][webchat]") {
    StreamCounter sc(2);
    CHECK(sc.acquire("a"));
    CHECK(sc.acquire("a"));
    CHECK_FALSE(sc.acquire("a"));
    CHECK(sc.acquire("b"));
    sc.release("a");
    CHECK(sc.acquire("a"));
    sc.release("a");
    sc.release("a");
    sc.release("b");
    sc.release("zzz");  // never acquired: no-op
    CHECK(sc.keys() == 0);
    CHECK(address_key("127.0.0.1:5555") == "127.0.0.1");
    CHECK(address_key("2001:db8:1:2:aaaa::1:443") == "2001:0db8:0001:0002::/64");
    CHECK(address_key("2001:db8:1:2:bbbb::7:80") == address_key("2001:db8:1:2:aaaa::1:443"));
    CHECK(address_key("::ffff:10.1.2.3:80") == "10.1.2.3");
}

TEST_CASE("webhooks: WEBHOOK_SECRETS with a malformed whsec_ secret stops the gateway at start", "[unit][gateway][webhooks]") {
    auto cfg = config_spec().load([](const std::string& k) -> std::optional<std::string> {
        if (k == "WEBHOOK_SECRETS") return "github=s1,billing=whsec_%%%";
        return std::nullopt;
    });
    REQUIRE_FALSE(cfg.ok());
    CHECK(cfg.error().detail.find("WEBHOOK_SECRETS") != std::string::npos);
    CHECK(cfg.error().detail.find("billing") != std::string::npos);
    CHECK(cfg.error().detail.find("%%%") == std::string::npos);
}
