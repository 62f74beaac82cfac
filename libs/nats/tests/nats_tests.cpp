#include <catch2/catch.hpp>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "engram/nats/nats.h"
#include "engram/testing/testing.h"

using namespace engram;
using namespace std::chrono_literals;
using engram::testing::eventually;

namespace {

std::unique_ptr<nats::Connection> connect_to(const std::string& url, nats::ConnectOptions o = {}) {
    o.url = url;
    o.name = "nats-tests";
    auto c = nats::Connection::connect(o);
    REQUIRE(c);
    REQUIRE(eventually([&] { return (*c)->connected(); }, 10s));
    return std::move(*c);
}

}  // namespace

TEST_CASE("subject_matches follows NATS wildcard rules", "[integration][nats]") {
    using nats::subject_matches;
    CHECK(subject_matches("events.>", "events.MessageReceived"));
    CHECK(subject_matches("events.>", "events.a.b"));
    CHECK_FALSE(subject_matches("events.>", "events"));
    CHECK(subject_matches("events.*", "events.a"));
    CHECK_FALSE(subject_matches("events.*", "events.a.b"));
    CHECK(subject_matches("events.Message*", "events.Message*"));
    CHECK_FALSE(subject_matches("events.Message*", "events.MessageReceived"));
    CHECK(subject_matches("a.b", "a.b"));
    CHECK_FALSE(subject_matches("a.b", "a.b.c"));
    CHECK_FALSE(subject_matches("a.b.c", "a.b"));
    CHECK(subject_matches(">", "a"));
    CHECK(subject_matches("*.b.>", "x.b.y"));
}

TEST_CASE("ensure_stream creates once and then leaves the stream as it is", "[integration][nats]") {
    auto c = connect_to(testing::Nats::shared().url());
    REQUIRE(c->ensure_stream("ENSURE", {"ensure.>"}));
    REQUIRE(c->ensure_stream("ENSURE", {"ensure.>"}));
    REQUIRE(c->ensure_stream("ENSURE", {"other.>"}));  // exists: left alone
    auto info = c->stream_info("ENSURE");
    REQUIRE(info);
    CHECK(info->subjects == std::vector<std::string>{"ensure.>"});
    CHECK(info->messages == 0);
    CHECK(info->duplicate_window == 120s);

    auto missing = c->stream_info("NOPE");
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == "nats");
    CHECK(missing.error().detail.find("stream info NOPE") != std::string::npos);

    auto bad = c->ensure_stream("BAD.NAME", {"bad.>"});
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == "nats");
    REQUIRE(c->delete_stream("ENSURE"));
    CHECK_FALSE(c->stream_info("ENSURE"));
}

TEST_CASE("publish_async: 10k messages acked in order, re-publishing the same ids adds nothing", "[integration][nats]") {
    auto c = connect_to(testing::Nats::shared().url());
    REQUIRE(c->ensure_stream("PUB", {"pub.>"}));
    constexpr int N = 10000;
    std::mutex mu;
    std::vector<std::uint64_t> seqs(N + 1, 0);
    std::atomic<int> acked{0}, failed{0}, duplicates{0};
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 1; i <= N; ++i) {
        std::string id = "id-" + std::to_string(i);
        auto st = c->publish_async("pub.e" + std::to_string(i % 7), "{\"n\":" + std::to_string(i) + "}", id,
                                   [&, i](const nats::PubAck& a) {
                                       if (!a.ok) {
                                           ++failed;
                                           return;
                                       }
                                       std::lock_guard lock(mu);
                                       seqs[i] = a.stream_seq;
                                       if (a.duplicate) ++duplicates;
                                       ++acked;
                                   });
        REQUIRE(st);
    }
    REQUIRE(c->wait_publish_complete(30s));
    auto elapsed = std::chrono::steady_clock::now() - t0;
    WARN("10k async publishes + acks: " << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms");
    CHECK(c->publish_pending() == 0);
    CHECK(acked == N);
    CHECK(failed == 0);
    CHECK(duplicates == 0);
    for (int i = 1; i <= N; ++i) CHECK(seqs[i] == static_cast<std::uint64_t>(i));  // stored in publish order

    auto info = c->stream_info("PUB");
    REQUIRE(info);
    CHECK(info->messages == N);
    CHECK(info->last_seq == N);

    // The same ids again: all duplicates, the stream does not grow.
    acked = 0;
    for (int i = 1; i <= N; ++i)
        REQUIRE(c->publish_async("pub.e" + std::to_string(i % 7), "again", "id-" + std::to_string(i), [&](const nats::PubAck& a) {
            if (a.ok && a.duplicate) ++duplicates;
            if (a.ok) ++acked;
        }));
    REQUIRE(c->wait_publish_complete(30s));
    CHECK(acked == N);
    CHECK(duplicates == N);
    info = c->stream_info("PUB");
    REQUIRE(info);
    CHECK(info->messages == N);

    auto sync = c->publish_sync("pub.x", "sync", "id-5");
    REQUIRE(sync);
    CHECK(sync->duplicate);
    CHECK(sync->stream_seq == 5);
    auto fresh = c->publish_sync("pub.x", "sync", "id-new", {{"X-Test", "yes"}});
    REQUIRE(fresh);
    CHECK_FALSE(fresh->duplicate);
    CHECK(fresh->stream_seq == N + 1);
    CHECK(fresh->stream == "PUB");

    auto msgs = c->get_stream_messages("PUB", N - 1, 10);
    REQUIRE(msgs);
    REQUIRE(msgs->size() == 3);
    CHECK((*msgs)[0].stream_seq == N - 1);
    CHECK((*msgs)[1].data == "{\"n\":" + std::to_string(N) + "}");
    CHECK((*msgs)[1].headers.at("Nats-Msg-Id") == "id-" + std::to_string(N));
    CHECK((*msgs)[2].subject == "pub.x");
    CHECK((*msgs)[2].headers.at("X-Test") == "yes");

    // Publishing to a subject no stream listens on: the ack reports the failure.
    std::atomic<bool> got{false};
    nats::PubAck nack;
    REQUIRE(c->publish_async("nostream.x", "x", "id-1", [&](const nats::PubAck& a) {
        nack = a;
        got = true;
    }));
    REQUIRE(c->wait_publish_complete(10s));
    REQUIRE(got);
    CHECK_FALSE(nack.ok);
    CHECK_FALSE(nack.error.empty());
    REQUIRE_FALSE(c->publish_sync("nostream.x", "x", ""));
    REQUIRE(c->delete_stream("PUB"));
}

TEST_CASE("a cursor that lost a delivery on the way reports a gap when checked idle", "[integration][nats]") {
    auto c = connect_to(testing::Nats::shared().url());
    REQUIRE(c->ensure_stream("CURSORGAP", {"cgap.>"}));
    auto cur = nats::Cursor::open(*c, nats::CursorOptions{"CURSORGAP", "cgap.>", 1});
    REQUIRE(cur);
    REQUIRE(c->publish_sync("cgap.a", "one", ""));
    auto got = (*cur)->fetch(10, 2s);
    REQUIRE(got);
    REQUIRE(got->size() == 1);
    CHECK((*cur)->check());
    // A pull answered to another inbox: to the reader it looks like the answer lost with a cluster
    // node's route, after which nothing more may ever arrive to show a gap in the sequence.
    REQUIRE(c->publish_sync("cgap.a", "two", ""));
    auto thief = connect_to(testing::Nats::shared().url());
    auto stolen = thief->request("$JS.API.CONSUMER.MSG.NEXT.CURSORGAP." + (*cur)->name(), R"({"batch":1})", 2s);
    REQUIRE(stolen);
    CHECK(stolen->data == "two");
    auto st = (*cur)->check();
    REQUIRE_FALSE(st);
    CHECK(st.error().code == "cursor_gap");
    CHECK((*cur)->next_seq() == 2);  // where the reopened cursor starts: nothing skipped
    cur->reset();
    REQUIRE(c->delete_stream("CURSORGAP"));
}

TEST_CASE("cursors closed while their pulls are still answered leave the reader thread alone", "[integration][nats]") {
    // NATS.c < 3.6.1 locks an inbound message's subscription without a reference (nats.c #637): a
    // subscription freed while the server still answers its pull (messages, the 408 of a pull that
    // expired with the client's timeout) crashed the reader thread. The processor closes every
    // cursor of its partitions at once when it loses them, each just after a fetch timed out. Here
    // cursors open, fetch with short timeouts while messages keep coming, and close, from several
    // threads: with the subscriptions freed at once this crashed within seconds (far sooner with
    // freed memory overwritten: GLIBC_TUNABLES=glibc.malloc.perturb=85).
    auto c = connect_to(testing::Nats::shared().url());
    REQUIRE(c->ensure_stream("CURSORCLOSE", {"cclose.>"}));
    std::atomic<bool> stop{false};
    std::atomic<int> closed{0};
    std::thread publisher([&] {
        for (long i = 0; !stop.load(); ++i) {
            (void)c->publish("cclose." + std::to_string(i % 8), "payload");
            if (i % 16 == 15) std::this_thread::sleep_for(1ms);
        }
    });
    std::vector<std::thread> closers;
    for (int t = 0; t < 8; ++t)
        closers.emplace_back([&, t] {
            const auto subject = "cclose." + std::to_string(t);
            while (!stop.load()) {
                // From the stream's end: no backlog, so each fetch waits for what comes and times out.
                auto mark = c->publish_sync(subject, "mark", "");
                if (!mark) continue;
                auto cur = nats::Cursor::open(*c, nats::CursorOptions{"CURSORCLOSE", subject, mark->stream_seq + 1});
                if (!cur) continue;
                for (int k = 0; k < 2; ++k) (void)(*cur)->fetch(64, std::chrono::milliseconds(3 + k));
                cur->reset();
                ++closed;
            }
        });
    std::this_thread::sleep_for(4s);
    stop = true;
    publisher.join();
    for (auto& t : closers) t.join();
    INFO(closed.load() << " cursors closed");
    CHECK(closed.load() > 50);
    CHECK(c->connected());
    REQUIRE(c->delete_stream("CURSORCLOSE"));
}

TEST_CASE("pull consumer: fetch, ack, nak redelivery with delivered count, term, durability", "[integration][nats]") {
    auto c = connect_to(testing::Nats::shared().url());
    REQUIRE(c->ensure_stream("PULL", {"pull.>"}));
    for (int i = 1; i <= 4; ++i) REQUIRE(c->publish_sync("pull.a", "m" + std::to_string(i), "p" + std::to_string(i)));
    REQUIRE(c->publish_sync("pull.b", "other", ""));  // outside the filter

    nats::ConsumerOptions o;
    o.stream = "PULL";
    o.durable = "proc-a";
    o.filter_subjects = {"pull.a"};
    o.max_deliver = 5;
    o.ack_wait = 1s;
    {
        auto pc = nats::PullConsumer::create(*c, o);
        REQUIRE(pc);
        auto batch = (*pc)->fetch(2, 2s);
        REQUIRE(batch);
        REQUIRE(batch->size() == 2);
        CHECK((*batch)[0]->msg().data == "m1");
        CHECK((*batch)[0]->msg().subject == "pull.a");
        CHECK((*batch)[0]->msg().stream_seq == 1);
        CHECK((*batch)[0]->msg().delivered == 1);
        CHECK((*batch)[0]->msg().timestamp_ns > 0);
        CHECK((*batch)[0]->msg().headers.at("Nats-Msg-Id") == "p1");
        CHECK((*batch)[1]->msg().data == "m2");
        REQUIRE((*batch)[0]->ack_sync());
        REQUIRE((*batch)[1]->nak());
        batch->clear();

        // The nak'ed m2 comes back with delivered == 2 (the server does not promise it comes
        // before m3/m4, which are nak'ed back here to keep them for later).
        bool seen = false;
        REQUIRE(eventually([&] {
            auto b = (*pc)->fetch(1, 1s);
            REQUIRE(b);
            for (auto& m : *b) {
                if (m->msg().data == "m2") {
                    CHECK(m->msg().delivered == 2);
                    REQUIRE(m->term());
                    seen = true;
                } else {
                    REQUIRE(m->nak());
                }
            }
            return seen;
        }));
    }  // consumer object gone; the durable stays on the server

    auto pc = nats::PullConsumer::create(*c, o);
    REQUIRE(pc);
    std::map<std::string, std::uint64_t> delivered;
    REQUIRE(eventually([&] {
        auto b = (*pc)->fetch(10, 500ms);
        REQUIRE(b);
        for (auto& m : *b) {
            delivered[m->msg().data] = m->msg().delivered;
            if (m->msg().data == "m3")
                REQUIRE(m->ack());
            else
                REQUIRE(m->in_progress());  // m4: kept, never acked -> redelivered after ack_wait
        }
        return delivered.size() >= 2;
    }));
    CHECK(delivered.size() == 2);
    CHECK(delivered.count("m3") == 1);
    REQUIRE(delivered.count("m4") == 1);
    std::uint64_t before = delivered["m4"];

    auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<nats::InMessage> redo;
    REQUIRE(eventually([&] {
        auto b = (*pc)->fetch(10, 2s);
        REQUIRE(b);
        for (auto& m : *b) {
            CHECK(m->msg().data == "m4");
            redo = std::move(m);
        }
        return redo != nullptr;
    }));
    CHECK(redo->msg().delivered == before + 1);
    CHECK(std::chrono::steady_clock::now() - t0 >= 500ms);
    REQUIRE(redo->ack_sync());

    auto t1 = std::chrono::steady_clock::now();
    auto none = (*pc)->fetch(10, 300ms);
    REQUIRE(none);
    CHECK(none->empty());  // m1, m3, m4 acked; m2 terminated
    CHECK(std::chrono::steady_clock::now() - t1 >= 250ms);

    auto info = (*pc)->info();
    REQUIRE(info);
    CHECK(info->num_pending == 0);
    CHECK(info->num_ack_pending == 0);
    CHECK(info->filter_subject == "pull.a");

    // The filter of an existing durable cannot change on nats-server 2.9: a clear error.
    auto other = o;
    other.filter_subjects = {"pull.b"};
    auto bad = nats::PullConsumer::create(*c, other);
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == "nats");
    CHECK(bad.error().detail.find("filter") != std::string::npos);
    REQUIRE(c->delete_stream("PULL"));
}

TEST_CASE("pull consumer: back-off and max_deliver bound redelivery", "[integration][nats]") {
    auto c = connect_to(testing::Nats::shared().url());
    REQUIRE(c->ensure_stream("BACKOFF", {"backoff.>"}));
    REQUIRE(c->publish_sync("backoff.x", "poison", "b1"));
    nats::ConsumerOptions o;
    o.stream = "BACKOFF";
    o.durable = "proc-b";
    o.max_deliver = 3;
    o.backoff = {200ms, 400ms};
    auto pc = nats::PullConsumer::create(*c, o);
    REQUIRE(pc);
    std::vector<std::uint64_t> deliveries;
    auto deadline = std::chrono::steady_clock::now() + 2500ms;
    while (std::chrono::steady_clock::now() < deadline) {
        auto b = (*pc)->fetch(1, 300ms);
        REQUIRE(b);
        for (auto& m : *b) deliveries.push_back(m->msg().delivered);  // never acked
    }
    CHECK(deliveries == std::vector<std::uint64_t>{1, 2, 3});
    REQUIRE(c->delete_stream("BACKOFF"));
}

TEST_CASE("pull consumer with several filter subjects filters on the client", "[integration][nats]") {
    auto c = connect_to(testing::Nats::shared().url());
    REQUIRE(c->ensure_stream("MULTI", {"multi.>"}));
    for (std::string t : {"a", "b", "c", "b", "a"}) REQUIRE(c->publish_sync("multi." + t, t, ""));
    nats::ConsumerOptions o;
    o.stream = "MULTI";
    o.durable = "proc-m";
    o.filter_subjects = {"multi.a", "multi.c"};
    auto pc = nats::PullConsumer::create(*c, o);
    REQUIRE(pc);
    std::vector<std::string> got;
    REQUIRE(eventually([&] {
        auto b = (*pc)->fetch(10, 200ms);
        REQUIRE(b);
        for (auto& m : *b) {
            got.push_back(m->msg().data);
            REQUIRE(m->ack_sync());
        }
        return got.size() >= 3;
    }));
    CHECK(got == std::vector<std::string>{"a", "c", "a"});
    REQUIRE(eventually([&] {
        auto info = (*pc)->info();
        return info && info->num_ack_pending == 0 && info->num_pending == 0;
    }));
    REQUIRE(c->delete_stream("MULTI"));
}

TEST_CASE("request/reply with a queue group of two subscribers", "[integration][nats]") {
    auto server = connect_to(testing::Nats::shared().url());
    auto client = connect_to(testing::Nats::shared().url());
    std::atomic<int> a{0}, b{0};
    auto make = [&](std::atomic<int>& count, std::string who) {
        return server->subscribe("svc.search", "searchers", [&count, who](const nats::Message& m, nats::Replier& r) {
            ++count;
            REQUIRE(r.can_reply());
            auto st = r.reply(who + ":" + m.data, {{"X-Who", who}});
            (void)st;
        });
    };
    auto sa = make(a, "A");
    auto sb = make(b, "B");
    REQUIRE(sa);
    REQUIRE(sb);
    REQUIRE(server->flush(2s));
    for (int i = 0; i < 100; ++i) {
        auto reply = client->request("svc.search", "q" + std::to_string(i), 2s);
        REQUIRE(reply);
        CHECK(reply->data.substr(2) == "q" + std::to_string(i));
        CHECK(reply->headers.at("X-Who") == reply->data.substr(0, 1));
    }
    CHECK(a + b == 100);  // each request answered by exactly one member
    CHECK(a > 0);
    CHECK(b > 0);

    sa->reset();
    sb->reset();
    REQUIRE(server->flush(2s));
    auto none = client->request("svc.search", "q", 500ms);
    REQUIRE_FALSE(none);
    CHECK(none.error().code == "nats");
    CHECK(none.error().detail.find("request to svc.search") != std::string::npos);
    CHECK(a + b == 100);

    // A handler may destroy its own subscription.
    std::unique_ptr<nats::Subscription> self;
    std::atomic<int> calls{0};
    auto s = server->subscribe("svc.once", "", [&](const nats::Message&, nats::Replier& r) {
        ++calls;
        (void)r.reply("bye");
        self.reset();
    });
    REQUIRE(s);
    self = std::move(*s);
    REQUIRE(server->flush(2s));
    CHECK(client->request("svc.once", "x", 2s));
    CHECK_FALSE(client->request("svc.once", "x", 300ms));
    CHECK(calls == 1);
}

TEST_CASE("server stopped then restarted: publishes fail cleanly or are buffered, the connection recovers",
          "[integration][nats]") {
    testing::Nats server;
    nats::ConnectOptions o;
    o.publish_ack_timeout = 2s;
    auto c = connect_to(server.url(), o);
    REQUIRE(c->ensure_stream("RESTART", {"restart.>"}));
    nats::ConsumerOptions co;
    co.stream = "RESTART";
    co.durable = "proc-r";
    auto pc = nats::PullConsumer::create(*c, co);
    REQUIRE(pc);
    for (int i = 1; i <= 100; ++i) REQUIRE(c->publish_async("restart.a", "before", "r" + std::to_string(i)));
    REQUIRE(c->wait_publish_complete(10s));

    server.stop();
    REQUIRE(eventually([&] { return !c->connected(); }, 5s));

    // Sync publish and requests fail with a nats error within their timeouts.
    auto sync = c->publish_sync("restart.a", "down", "down-1");
    REQUIRE_FALSE(sync);
    CHECK(sync.error().code == "nats");
    auto info = c->stream_info("RESTART");
    REQUIRE_FALSE(info);
    CHECK(info.error().code == "nats");
    auto f = (*pc)->fetch(1, 200ms);
    if (f)
        CHECK(f->empty());
    else
        CHECK(f.error().code == "nats");

    // Async publishes while down: buffered (ok) or refused (nats error); every accepted one gets
    // exactly one ack callback — stored after the restart, or a timeout.
    std::atomic<int> accepted{0}, callbacks{0}, ok_acks{0}, timeouts{0};
    for (int i = 1; i <= 50; ++i) {
        auto st = c->publish_async("restart.a", "during", "d" + std::to_string(i), [&](const nats::PubAck& a) {
            ++callbacks;
            if (a.ok) ++ok_acks;
            if (a.timeout) ++timeouts;
        });
        if (st)
            ++accepted;
        else
            CHECK(st.error().code == "nats");
    }

    server.start();
    REQUIRE(eventually([&] { return c->connected(); }, 10s));
    REQUIRE(eventually([&] { return callbacks == accepted; }, 10s));
    INFO("accepted " << accepted << " ok " << ok_acks << " timeouts " << timeouts);
    CHECK(ok_acks + timeouts == accepted);

    // Republishing everything (as a relay would after failures) leaves exactly one copy each.
    for (int i = 1; i <= 50; ++i) REQUIRE(c->publish_async("restart.a", "during", "d" + std::to_string(i)));
    REQUIRE(c->wait_publish_complete(10s));
    // The failed publish_sync ("down-1") may have been buffered and stored after all: a timeout
    // means "unknown", never "not stored". Each id is in the stream exactly once.
    auto all = c->get_stream_messages("RESTART", 1, 1000);
    REQUIRE(all);
    std::map<std::string, int> ids;
    for (auto& m : *all) ++ids[m.headers["Nats-Msg-Id"]];
    for (auto& [id, n] : ids) CHECK(n == 1);
    CHECK(ids.size() == all->size());
    CHECK(ids.size() >= 150);  // r1..r100 before (the file store survived the restart), d1..d50
    CHECK(ids.size() <= 151);
    for (int i = 1; i <= 100; ++i) CHECK(ids.count("r" + std::to_string(i)) == 1);
    for (int i = 1; i <= 50; ++i) CHECK(ids.count("d" + std::to_string(i)) == 1);
    const std::size_t total = all->size();

    // The durable consumer works again.
    std::size_t n = 0;
    REQUIRE(eventually(
        [&] {
            auto b = (*pc)->fetch(100, 500ms);
            if (!b) return false;
            for (auto& m : *b) {
                (void)m->ack();
                ++n;
            }
            return n >= total;
        },
        20s));
    CHECK(n == total);

    // A crash (SIGKILL) of the server is survived as well.
    server.stop(true);
    server.start();
    REQUIRE(eventually([&] { return c->connected(); }, 10s));
    auto p = c->publish_sync("restart.a", "after crash", "c1");
    REQUIRE(p);
    CHECK(p->stream_seq == total + 1);
}

TEST_CASE("connect: retry in the background, or fail at once", "[integration][nats]") {
    testing::Nats server;
    server.stop();
    nats::ConnectOptions o;
    o.url = server.url();
    o.retry_on_failed_connect = false;
    auto fail = nats::Connection::connect(o);
    REQUIRE_FALSE(fail);
    CHECK(fail.error().code == "nats");
    // The address, never the token.
    CHECK(fail.error().detail.find("connecting to nats://***@127.0.0.1:" + std::to_string(server.port())) != std::string::npos);
    CHECK(fail.error().detail.find(server.token()) == std::string::npos);

    o.retry_on_failed_connect = true;
    auto later = nats::Connection::connect(o);
    REQUIRE(later);
    CHECK_FALSE((*later)->connected());
    server.start();
    REQUIRE(eventually([&] { return (*later)->connected(); }, 10s));
    REQUIRE((*later)->ensure_stream("LATER", {"later.>"}));
}

TEST_CASE("an async publish nobody acknowledges is reported as a timeout", "[integration][nats]") {
    nats::ConnectOptions o;
    o.publish_ack_timeout = 300ms;
    auto c = connect_to(testing::Nats::shared().url(), o);
    // A core subscriber that never answers: no stream, no "no responders" either, so no ack.
    auto hole = c->subscribe("blackhole.x", "", [](const nats::Message&, nats::Replier&) {});
    REQUIRE(hole);
    REQUIRE(c->flush(2s));
    std::atomic<int> timeouts{0}, calls{0};
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 5; ++i)
        REQUIRE(c->publish_async("blackhole.x", "x", "h" + std::to_string(i), [&](const nats::PubAck& a) {
            ++calls;
            if (!a.ok && a.timeout) ++timeouts;
        }));
    CHECK(c->publish_pending() == 5);
    REQUIRE(c->wait_publish_complete(5s));
    CHECK(std::chrono::steady_clock::now() - t0 >= 250ms);
    CHECK(calls == 5);
    CHECK(timeouts == 5);
    CHECK(c->publish_pending() == 0);

    auto sync = c->publish_sync("blackhole.x", "x", "h9");
    REQUIRE_FALSE(sync);
    CHECK(sync.error().code == "nats");
    INFO(sync.error().detail);
    CHECK(sync.error().detail.find("imeout") != std::string::npos);
}

TEST_CASE("a bounded window: publish_async blocks while max_pending_acks are outstanding", "[integration][nats]") {
    nats::ConnectOptions o;
    o.max_pending_acks = 4;
    o.publish_stall_wait = 200ms;
    o.publish_ack_timeout = 3s;
    auto c = connect_to(testing::Nats::shared().url(), o);
    auto hole = c->subscribe("blackhole.y", "", [](const nats::Message&, nats::Replier&) {});
    REQUIRE(hole);
    REQUIRE(c->flush(2s));
    for (int i = 0; i < 4; ++i) REQUIRE(c->publish_async("blackhole.y", "x", ""));
    auto t0 = std::chrono::steady_clock::now();
    auto st = c->publish_async("blackhole.y", "x", "");
    REQUIRE_FALSE(st);  // window full for longer than publish_stall_wait
    CHECK(st.error().code == "nats");
    CHECK(std::chrono::steady_clock::now() - t0 >= 150ms);
    CHECK(c->publish_pending() == 4);
}

TEST_CASE("expected last msg id keeps the stream in publish order - duplicates are checked first", "[integration][nats]") {
    auto c = connect_to(testing::Nats::shared().url());
    REQUIRE(c->ensure_stream("ORDER", {"order.>"}));
    nats::PublishOptions a;
    a.msg_id = "a";
    REQUIRE(c->publish_sync("order.x", "A", a));
    nats::PublishOptions b;
    b.msg_id = "b";
    b.expected_last_msg_id = "a";
    auto rb = c->publish_sync("order.x", "B", b);
    REQUIRE(rb);
    CHECK(rb->stream_seq == 2);
    // Republishing b (same expectation) is a duplicate, not an error.
    auto again = c->publish_sync("order.x", "B", b);
    REQUIRE(again);
    CHECK(again->duplicate);
    CHECK(again->stream_seq == 2);
    // A new message whose predecessor is missing is refused.
    nats::PublishOptions d;
    d.msg_id = "d";
    d.expected_last_msg_id = "c";
    auto rd = c->publish_sync("order.x", "D", d);
    REQUIRE_FALSE(rd);
    CHECK(rd.error().code == "nats");
    CHECK(rd.error().extra.value("js_error_code", 0) == 10070);
    // The same through publish_async: the ack callback carries the JetStream error.
    std::atomic<int> js_code{0};
    REQUIRE(c->publish_async("order.x", "D", d, [&](const nats::PubAck& ack) { js_code = ack.ok ? -1 : ack.js_error_code; }));
    REQUIRE(c->wait_publish_complete(5s));
    CHECK(js_code == 10070);
    nats::PublishOptions s;
    s.msg_id = "e";
    s.expected_last_seq = 2;
    s.headers = {{"X-K", "v"}};
    auto rs = c->publish_sync("order.x", "E", s);
    REQUIRE(rs);
    CHECK(rs->stream_seq == 3);
    auto info = c->stream_info("ORDER");
    REQUIRE(info);
    CHECK(info->messages == 3);
    REQUIRE(c->delete_stream("ORDER"));
}

TEST_CASE("a server that requires a token refuses a client without it, and learns max_payload", "[integration][nats]") {
    auto& server = testing::Nats::shared();  // configured like the run command's: a token, 8 MiB
    REQUIRE_FALSE(server.token().empty());
    nats::ConnectOptions o;
    o.url = server.url_without_token();
    o.retry_on_failed_connect = false;
    auto refused = nats::Connection::connect(o);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().detail.find("uthoriz") != std::string::npos);
    o.url = "nats://wrong-token@127.0.0.1:" + std::to_string(server.port());
    REQUIRE_FALSE(nats::Connection::connect(o));
    // The error must not echo a token given in the URL.
    auto again = nats::Connection::connect(o);
    CHECK(again.error().detail.find("wrong-token") == std::string::npos);

    auto c = connect_to(server.url());
    CHECK(c->max_payload() == 8 * 1024 * 1024);
    testing::NatsOptions plain;
    plain.auth = false;
    plain.max_payload = 0;
    testing::Nats defaults(plain);
    auto d = connect_to(defaults.url());
    CHECK(d->max_payload() == 1024 * 1024);
}
