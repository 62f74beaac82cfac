// Signed webhooks against the real event store: the timestamp is signed with the body, so a captured
// request cannot be stored again later; Standard Webhooks senders are checked with signatures
// computed by Python's hmac (not by the code under test).
#include "signature.h"
#include "support.h"

#include "engram/http/client.h"
#include "engram/testing/testing.h"

#include <catch2/catch.hpp>

using namespace engram;
using gateway::test::require_error;
using nlohmann::json;

namespace {

constexpr const char* kStandardKey = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";  // base64 of the source's key

struct Fixture {
    testing::Stack stack{"webhooks"};
    std::int64_t now = 1'800'000'000;
    gateway::test::InProcess gw{
        stack,
        {{"WEBHOOK_SECRETS", std::string("github=s3cret,billing=whsec_") + kStandardKey}, {"WEBHOOK_MAX_SKEW_S", "300"}},
        [this] { return now; }};

    // A request captured on the wire: its headers and body as the sender sent them.
    struct Capture {
        std::string body;
        http::Headers headers;
    };
    Capture signed_request(const std::string& body, std::int64_t ts, const std::string& delivery) {
        return {body,
                {{"Content-Type", "application/json"},
                 {"X-Webhook-Timestamp", std::to_string(ts)},
                 {"X-Signature-256", "sha256=" + gateway::hmac_sha256_hex("s3cret", std::to_string(ts) + "." + body)},
                 {"X-Delivery-Id", delivery}}};
    }
    http::ClientResponse send(const std::string& source, const Capture& c) {
        auto r = gw.client->request("POST", "/webhooks/" + source, c.body, c.headers);
        REQUIRE(r.ok());
        return *r;
    }
    static Capture with(Capture c, const std::string& name, const std::string& value) {
        for (auto& [k, v] : c.headers)
            if (k == name) v = value;
        return c;
    }

    // A Standard Webhooks delivery signed by Python's hmac and sent with Python's http.client.
    json standard(const std::string& id, std::int64_t ts, const std::string& body, const std::string& key_b64 = kStandardKey,
                  const std::string& extra_signatures = "") {
        static const char* script = R"(import base64, hashlib, hmac, http.client, json, sys
port, key_b64, msg_id, ts, body, extra = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
key = base64.b64decode(key_b64)
sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.{body}".encode(), hashlib.sha256).digest()).decode()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
c.request("POST", "/webhooks/billing", body=body.encode(), headers={"Content-Type": "application/json",
          "webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": (extra + " v1," + sig).strip()})
r = c.getresponse()
print("RESULT " + json.dumps({"status": r.status, "body": r.read().decode()})))";
        auto ran = testing::run(
            {"python3", "-c", script, std::to_string(gw.app->port()), key_b64, id, std::to_string(ts), body, extra_signatures});
        INFO(ran.output);
        REQUIRE(ran.exit_code == 0);
        return json::parse(ran.output.substr(ran.output.rfind("RESULT ") + 7));
    }
};

int status_of(const json& r) { return r["status"].get<int>(); }
json body_of(const json& r) { return json::parse(r["body"].get<std::string>()); }

}  // namespace

TEST_CASE("webhooks: a captured request replayed with a fresh timestamp or another delivery id is not stored again",
          "[integration][gateway][webhooks]") {
    Fixture f;
    auto capture = f.signed_request(R"({"action":"opened","number":7})", f.now, "d-1");
    auto first = f.send("github", capture);
    INFO(first.body);
    REQUIRE(first.status == 201);
    CHECK(f.send("github", capture).status == 200);  // the sender's own retry: the stored event

    // Later, the attacker stamps the capture with a fresh time: the signature covers the old one.
    f.now += 600;
    require_error(f.send("github", Fixture::with(capture, "X-Webhook-Timestamp", std::to_string(f.now))), 401, "unauthorized",
                  "does not match");
    require_error(f.send("github", Fixture::with(Fixture::with(capture, "X-Webhook-Timestamp", std::to_string(f.now)),
                                                 "X-Delivery-Id", "d-new")),
                  401, "unauthorized", "does not match");
    // ...or sends it as it was: outside the window.
    require_error(f.send("github", capture), 401, "unauthorized", "Timestamp");
    // Inside the window, under another delivery id: the same signature, refused.
    f.now -= 600;
    require_error(f.send("github", Fixture::with(capture, "X-Delivery-Id", "d-2")), 401, "unauthorized", "replay");
    // A signature of the body alone (the old scheme) is not enough any more.
    auto body_only = Fixture::with(capture, "X-Signature-256", "sha256=" + gateway::hmac_sha256_hex("s3cret", capture.body));
    require_error(f.send("github", Fixture::with(body_only, "X-Delivery-Id", "d-3")), 401, "unauthorized", "does not match");
    CHECK(f.stack.count("WebhookReceived") == 1);

    // The gateway still takes new deliveries, signed now.
    auto next = f.send("github", f.signed_request(R"({"action":"closed","number":7})", f.now + 1, "d-4"));
    CHECK(next.status == 201);
    CHECK(f.stack.count("WebhookReceived") == 2);
}

TEST_CASE("webhooks: Standard Webhooks signatures computed by Python verify, a tampered or late one does not",
          "[integration][gateway][webhooks]") {
    Fixture f;
    const std::string body = R"({"type":"invoice.paid","amount":42})";
    auto ok = f.standard("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", f.now, body);
    INFO(ok.dump());
    REQUIRE(status_of(ok) == 201);
    CHECK(body_of(ok)["delivery_id"] == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
    auto again = f.standard("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", f.now + 30, body);  // a retry, re-signed
    CHECK(status_of(again) == 200);
    CHECK(body_of(again)["event_id"] == body_of(ok)["event_id"]);
    // Several signatures (the sender rotating its key): one match is enough.
    CHECK(status_of(f.standard("msg_rotated", f.now, body, kStandardKey, "v1,bm90IHRoaXMgb25l v1a,ignored")) == 201);

    auto refused = [&](const json& r, const std::string& part) {
        INFO(r.dump());
        REQUIRE(status_of(r) == 401);
        CHECK(body_of(r)["error"] == "unauthorized");
        CHECK(body_of(r)["detail"].get<std::string>().find(part) != std::string::npos);
    };
    refused(f.standard("msg_other_key", f.now, body, "c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ=="), "no webhook-signature matches");
    refused(f.standard("msg_late", f.now - 301, body), "Timestamp");
    refused(f.standard("msg_early", f.now + 301, body), "Timestamp");
    // The same id with another body: the signature covers the id, so this is a new, conflicting delivery.
    auto conflict = f.standard("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", f.now, R"({"type":"invoice.paid","amount":4200})");
    CHECK(status_of(conflict) == 409);
    CHECK(body_of(conflict)["error"] == "id_conflict");
    // Headers edited in flight.
    auto signed_ok = gateway::test::python_request(f.gw.app->port(), "POST", "/webhooks/billing",
                                                   {{"Content-Type", "application/json"},
                                                    {"webhook-id", "msg_x"},
                                                    {"webhook-timestamp", std::to_string(f.now)},
                                                    {"webhook-signature", "v1,AAAA"}},
                                                   body);
    require_error(signed_ok, 401, "unauthorized", "no webhook-signature matches");
    CHECK(f.stack.count("WebhookReceived") == 2);
    auto stored = f.stack.aggregate("webhook:billing");
    REQUIRE(stored.size() == 2);
    CHECK(stored[0]["data"]["payload"]["amount"] == 42);
    CHECK(stored[0]["data"]["delivery_id"] == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
}
