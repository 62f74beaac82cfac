#include "engram/http/client.h"

#include <fmt/format.h>
#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <atomic>
#include <boost/asio/post.hpp>
#include <limits>
#include <optional>

#include "beast.h"
#include "sse_parser.h"
#include "engram/http/url.h"

namespace engram::http {

using namespace detail;
namespace ssl = boost::asio::ssl;
using Clock = std::chrono::steady_clock;

namespace {

struct ParsedUrl {
    bool tls = false;
    std::string host, port, prefix, host_header;
};

Result<ParsedUrl> parse_base_url(std::string_view url) {
    auto bad = [&](std::string_view why) { return Error::make("bad_url", fmt::format("invalid base URL '{}': {}", url, why)); };
    ParsedUrl out;
    auto sep = url.find("://");
    if (sep == std::string_view::npos) return bad("expected http://host[:port] or https://host[:port]");
    auto scheme = lower(url.substr(0, sep));
    if (scheme == "https")
        out.tls = true;
    else if (scheme != "http")
        return bad("the scheme must be http or https");
    auto rest = url.substr(sep + 3);
    auto slash = rest.find('/');
    auto authority = rest.substr(0, slash);
    if (slash != std::string_view::npos) out.prefix = std::string(rest.substr(slash));
    if (out.prefix.find_first_of("?#") != std::string::npos) return bad("a base URL has no query or fragment");
    while (!out.prefix.empty() && out.prefix.back() == '/') out.prefix.pop_back();
    if (authority.find('@') != std::string_view::npos) return bad("user info is not supported");
    std::string_view host, port;
    if (!authority.empty() && authority.front() == '[') {  // [::1]:8080
        auto close = authority.find(']');
        if (close == std::string_view::npos) return bad("unterminated IPv6 address");
        host = authority.substr(1, close - 1);
        auto after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return bad("junk after the IPv6 address");
            port = after.substr(1);
        }
    } else {
        auto colon = authority.rfind(':');
        host = authority.substr(0, colon);
        if (colon != std::string_view::npos) port = authority.substr(colon + 1);
    }
    if (host.empty()) return bad("missing host");
    if (port.empty()) {
        out.port = out.tls ? "443" : "80";
    } else {
        if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos) return bad("invalid port");
        auto n = std::stoul(std::string(port));
        if (n == 0 || n > 65535) return bad("invalid port");
        out.port = std::string(port);
    }
    out.host = std::string(host);
    bool default_port = out.port == (out.tls ? "443" : "80");
    bool v6 = out.host.find(':') != std::string::npos;
    out.host_header = v6 ? "[" + out.host + "]" : out.host;
    if (!default_port) out.host_header += ":" + out.port;
    return out;
}

bool closed_by_peer(const error_code& ec) {
    return ec == net::error::eof || ec == bhttp::error::end_of_stream || ec == net::error::connection_reset ||
           ec == net::error::broken_pipe || ec == net::error::connection_aborted || ec == ssl::error::stream_truncated;
}

// Response headers beyond this are refused like a body over the limit (Beast's default is 8 KiB,
// which some real servers' headers approach).
constexpr std::uint32_t kHeaderLimit = 64 * 1024;

}  // namespace

struct Client::Impl {
    std::string base_url;
    ClientOptions opts;
    std::optional<Error> url_error;
    ParsedUrl url;

    net::io_context ioc{1};
    std::unique_ptr<ssl::context> ssl_ctx;  // outlives `secure`
    std::unique_ptr<beast::tcp_stream> plain;
    std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> secure;
    beast::flat_buffer buffer;
    std::size_t opened = 0;
    std::atomic<bool> cancelled{false};
    // Set while resolving / connecting, so cancel() can reach those too (only touched on the
    // client's own thread, like the streams).
    tcp::resolver* resolving = nullptr;
    beast::tcp_stream* connecting = nullptr;

    Impl(std::string base, ClientOptions o) : base_url(std::move(base)), opts(std::move(o)) {
        auto parsed = parse_base_url(base_url);
        if (!parsed) {
            url_error = parsed.error();
            return;
        }
        url = std::move(parsed.value());
        if (url.tls) {
            ssl_ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
            error_code ec;
            ssl_ctx->set_default_verify_paths(ec);
            ssl_ctx->set_verify_mode(opts.verify_tls ? ssl::verify_peer : ssl::verify_none, ec);
        }
    }
    ~Impl() { drop(); }

    bool connected() const { return plain || secure; }
    beast::tcp_stream& lowest() { return plain ? *plain : beast::get_lowest_layer(*secure); }

    template <class F>
    error_code with_stream(F&& f) {
        if (secure) return f(*secure);
        return f(*plain);
    }

    // Runs one asynchronous operation to completion on this client's io_context (timeouts come from
    // the tcp_stream's expiry).
    template <class Start>
    error_code run(Start&& start) {
        if (cancelled) return net::error::operation_aborted;
        error_code result = net::error::would_block;
        start([&result](error_code ec, auto&&...) { result = ec; });
        ioc.restart();
        ioc.run();
        return result;
    }

    void drop() {
        if (connected()) {
            error_code ec;
            auto& s = lowest();
            s.socket().shutdown(tcp::socket::shutdown_both, ec);
            s.close();
        }
        secure.reset();
        plain.reset();
        buffer.clear();
        // Let the closed stream's cancelled timer handlers run so nothing is left in the queue.
        ioc.restart();
        ioc.poll();
    }

    Error cancelled_error() const { return Error::make("cancelled", fmt::format("the request to {} was cancelled", where())); }

    std::string where() const { return fmt::format("{}:{}", url.host, url.port); }

    Error failure(const error_code& ec, std::string_view method, std::string_view raw_target, std::string_view doing) {
        if (cancelled) return cancelled_error();
        auto target = redact_target(raw_target);
        if (ec == beast::error::timeout)
            return scrub(Error::make("timeout", fmt::format("{} {}{} timed out while {} (limit {} ms)", method, where(), target,
                                                            doing, opts.timeout.count())));
        if (ec == bhttp::error::body_limit)
            return scrub(
                Error::make("response_too_large", fmt::format("{} {}{}: the response body exceeds the client's limit of {} bytes "
                                                              "(ClientOptions::response_limit)",
                                                              method, where(), target, opts.response_limit)));
        if (ec == bhttp::error::header_limit)
            return scrub(Error::make("response_too_large", fmt::format("{} {}{}: the response header exceeds {} bytes", method,
                                                                       where(), target, kHeaderLimit)));
        return scrub(Error::make("io", fmt::format("{} {}{} failed while {}: {}", method, where(), target, doing, ec.message())));
    }

    Error scrub(Error e) const {
        for (const auto& secret : opts.redact) {
            if (secret.empty()) continue;
            for (auto at = e.detail.find(secret); at != std::string::npos; at = e.detail.find(secret, at))
                e.detail.replace(at, secret.size(), "<redacted>");
        }
        return e;
    }

    Status connect(Clock::time_point deadline) {
        drop();
        error_code ec;
        // Resolving and connecting are asynchronous like everything else, so cancel() reaches them.
        tcp::resolver resolver(ioc);
        tcp::resolver::results_type results;
        resolving = &resolver;
        ec = run([&](auto h) {
            resolver.async_resolve(url.host, url.port,
                                   [h = std::move(h), &results](error_code e, tcp::resolver::results_type r) mutable {
                                       results = std::move(r);
                                       h(e);
                                   });
        });
        resolving = nullptr;
        if (cancelled) return cancelled_error();
        if (ec) return Error::make("connect", fmt::format("cannot resolve {}: {}", url.host, ec.message()));
        auto s = std::make_unique<beast::tcp_stream>(ioc);
        s->expires_at(deadline);
        connecting = s.get();
        ec = run([&](auto h) { s->async_connect(results, std::move(h)); });
        connecting = nullptr;
        if (cancelled) return cancelled_error();
        if (ec == beast::error::timeout)
            return Error::make("timeout", fmt::format("connecting to {} timed out after {} ms", where(), opts.timeout.count()));
        if (ec) return Error::make("connect", fmt::format("cannot connect to {}: {}", where(), ec.message()));
        s->socket().set_option(tcp::no_delay(true), ec);
        ++opened;
        if (!url.tls) {
            plain = std::move(s);
            return ok();
        }
        secure = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(std::move(*s), *ssl_ctx);
        net::ip::make_address(url.host, ec);
        if (ec) SSL_set_tlsext_host_name(secure->native_handle(), url.host.c_str());  // SNI is for names only
        if (opts.verify_tls) secure->set_verify_callback(ssl::host_name_verification(url.host));
        beast::get_lowest_layer(*secure).expires_at(deadline);
        ec = run([&](auto h) { secure->async_handshake(ssl::stream_base::client, std::move(h)); });
        if (ec) {
            drop();
            if (ec == beast::error::timeout)
                return Error::make("timeout",
                                   fmt::format("TLS handshake with {} timed out after {} ms", where(), opts.timeout.count()));
            return Error::make("connect", fmt::format("TLS handshake with {} failed: {}", where(), ec.message()));
        }
        return ok();
    }

    bhttp::request<bhttp::string_body> make_request(std::string_view method, std::string_view target, std::string_view body,
                                                    const Headers& headers) {
        bhttp::request<bhttp::string_body> req;
        auto verb = bhttp::string_to_verb(bsv(method));
        if (verb == bhttp::verb::unknown)
            req.method_string(bsv(method));
        else
            req.method(verb);
        std::string full = url.prefix;
        if (target.empty() || target.front() != '/') full.push_back('/');
        full += target;
        req.target(bsv(full));
        req.version(11);
        req.set(bhttp::field::host, bsv(url.host_header));
        req.set(bhttp::field::user_agent, "engram-http");
        for (const auto& [k, v] : opts.default_headers) req.set(bsv(k), bsv(v));
        for (const auto& [k, v] : headers) req.set(bsv(k), bsv(v));
        req.body() = std::string(body);
        req.prepare_payload();
        return req;
    }

    // Sends `req` and reads at least the response header into `parser` (whole message unless
    // header_only), reconnecting once when a kept-alive connection turns out to have been closed.
    template <class Parser, class MakeParser>
    Status exchange(const bhttp::request<bhttp::string_body>& req, std::optional<Parser>& parser, MakeParser&& make_parser,
                    Clock::time_point deadline, bool header_only, std::optional<std::chrono::milliseconds> read_timeout) {
        auto method = std::string(req.method_string());
        auto target = std::string(req.target());
        for (int attempt = 0;; ++attempt) {
            bool reused = connected();
            if (!reused) {
                auto st = connect(deadline);
                if (!st) return std::move(st).error();
            }
            lowest().expires_at(deadline);
            auto ec = with_stream([&](auto& s) { return run([&](auto h) { bhttp::async_write(s, req, std::move(h)); }); });
            if (ec) {
                drop();
                if (reused && attempt == 0 && closed_by_peer(ec)) continue;
                return failure(ec, method, target, "sending the request");
            }
            parser.emplace();
            make_parser(*parser);
            if (read_timeout)
                lowest().expires_after(*read_timeout);
            else
                lowest().expires_at(deadline);
            // The header first, then the body: Beast 1.74 checks a Content-Length against the body limit
            // only at the end of the header and, reading eagerly, loses that error when body bytes
            // follow in the same buffer. Reading the header alone keeps the check.
            ec = with_stream(
                [&](auto& s) { return run([&](auto h) { bhttp::async_read_header(s, buffer, *parser, std::move(h)); }); });
            if (ec) {
                bool retry = reused && attempt == 0 && !parser->got_some() && closed_by_peer(ec);
                drop();
                if (retry) continue;
                return failure(ec, method, target, "reading the response");
            }
            if (header_only) return ok();
            ec = with_stream([&](auto& s) { return run([&](auto h) { bhttp::async_read(s, buffer, *parser, std::move(h)); }); });
            if (ec) {
                drop();
                return failure(ec, method, target, "reading the response");
            }
            return ok();
        }
    }
};

Client::Client(std::string base_url, ClientOptions opts) : impl_(std::make_unique<Impl>(std::move(base_url), std::move(opts))) {}
Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

Result<ClientResponse> Client::request(std::string_view method, std::string_view path_and_query, std::string_view body,
                                       const Headers& headers) {
    auto& im = *impl_;
    if (im.url_error) return *im.url_error;
    if (im.cancelled) return im.cancelled_error();
    auto deadline = Clock::now() + im.opts.timeout;
    auto req = im.make_request(method, path_and_query, body, headers);
    bool head = req.method() == bhttp::verb::head;
    std::optional<bhttp::response_parser<bhttp::string_body>> parser;
    auto st = im.exchange(
        req, parser,
        [head, limit = im.opts.response_limit](auto& p) {
            // A number, never boost::none: Beast 1.74 compares the Content-Length against the empty
            // optional as if it were 0 and fails every answer whose header arrives in a segment of its
            // own (the error is only overwritten when body bytes follow in the same buffer).
            p.body_limit(static_cast<std::uint64_t>(limit));
            p.header_limit(kHeaderLimit);
            if (head) p.skip(true);
        },
        deadline, false, std::nullopt);
    if (!st) return std::move(st).error();
    bool reusable = !parser->need_eof();  // a body that ended with the connection
    auto msg = parser->release();
    ClientResponse out;
    out.status = static_cast<int>(msg.result_int());
    out.body = std::move(msg.body());
    copy_headers(msg, out.headers);
    if (!msg.keep_alive() || !reusable) im.drop();
    return out;
}

Result<ClientResponse> Client::get(std::string_view path, const Headers& h) { return request("GET", path, {}, h); }

Result<ClientResponse> Client::post_json(std::string_view path, const nlohmann::json& body, const Headers& h) {
    Headers headers = h;
    bool has_type = false;
    for (const auto& [k, v] : headers) has_type = has_type || lower(k) == "content-type";
    if (!has_type) headers.emplace_back("Content-Type", "application/json");
    return request("POST", path, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), headers);
}

Result<ClientResponse> Client::stream(std::string_view method, std::string_view path, std::string_view body,
                                      const Headers& headers, const BodyCallback& on_body, std::chrono::milliseconds idle_timeout,
                                      bool read_error_body) {
    auto& im = *impl_;
    if (im.url_error) return *im.url_error;
    if (im.cancelled) return im.cancelled_error();
    auto req = im.make_request(method, path, body, headers);
    std::optional<bhttp::response_parser<bhttp::buffer_body>> parser;
    auto st = im.exchange(
        req, parser,
        [](auto& p) {
            // A stream has no total size: the caller bounds what it keeps (a non-2xx body is bounded
            // below by response_limit).
            p.body_limit(std::numeric_limits<std::uint64_t>::max());
            p.header_limit(kHeaderLimit);
        },
        Clock::now() + im.opts.timeout, true, idle_timeout);
    if (!st) return std::move(st).error();
    struct DropAtExit {
        Impl& im;
        ~DropAtExit() { im.drop(); }  // the stream may be left mid-message: never reuse it
    } drop_at_exit{im};

    auto& p = *parser;
    ClientResponse head;
    head.status = static_cast<int>(p.get().result_int());
    copy_headers(p.get(), head.headers);
    const bool success = head.status >= 200 && head.status < 300;
    if (!success && !read_error_body) return head;
    std::array<char, 16 * 1024> buf;
    for (;;) {
        if (p.is_done()) return head;
        p.get().body().data = buf.data();
        p.get().body().size = buf.size();
        im.lowest().expires_after(idle_timeout);
        auto ec = im.with_stream(
            [&](auto& s) { return im.run([&](auto hnd) { bhttp::async_read_some(s, im.buffer, p, std::move(hnd)); }); });
        if (ec == bhttp::error::need_buffer) ec = {};
        std::size_t n = buf.size() - p.get().body().size;
        if (n > 0) {
            if (success) {
                if (!on_body(head, {buf.data(), n})) return head;
            } else {
                if (head.body.size() + n > im.opts.response_limit)
                    return im.scrub(Error::make("response_too_large",
                                                fmt::format("{} {}{}: the response body exceeds the client's limit of {} bytes "
                                                            "(ClientOptions::response_limit)",
                                                            method, im.base_url, redact_target(path), im.opts.response_limit)));
                head.body.append(buf.data(), n);
            }
        }
        if (!ec) continue;
        if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message || ec == net::error::eof ||
            ec == ssl::error::stream_truncated) {
            // Cut off before the end of a framed body (Content-Length, chunked): the caller sees the
            // body it got, and says itself whether that is complete.
            if (ec == bhttp::error::partial_message) head.headers["x-engram-truncated"] = "1";
            return head;
        }
        if (im.cancelled) return im.cancelled_error();
        if (ec == beast::error::timeout)
            return im.scrub(Error::make("timeout", fmt::format("{} {}{}: no data for {} ms", method, im.base_url,
                                                               redact_target(path), idle_timeout.count())));
        return im.scrub(Error::make("io", fmt::format("{} {}{} failed while reading the response: {}", method, im.base_url,
                                                      redact_target(path), ec.message())));
    }
}

Result<int> Client::sse(std::string_view path, const Headers& h,
                        const std::function<bool(const std::string&, const std::string&, const std::string&)>& on_event,
                        std::chrono::milliseconds idle_timeout) {
    auto& im = *impl_;
    Headers headers{{"Accept", "text/event-stream"}, {"Cache-Control", "no-cache"}};
    headers.insert(headers.end(), h.begin(), h.end());
    SseParser sse(on_event, im.opts.response_limit);
    bool too_large = false;
    // A non-2xx answer is returned as soon as its header is read: its body is not waited for.
    auto r = stream(
        "GET", path, {}, headers,
        [&](const ClientResponse&, std::string_view bytes) {
            auto fed = sse.feed(bytes);
            too_large = fed == SseParser::Feed::too_large;
            return fed == SseParser::Feed::more;
        },
        idle_timeout, false);
    if (!r) return std::move(r).error();
    if (too_large)
        return im.scrub(
            Error::make("response_too_large", fmt::format("GET {}{}: an event stream line or event exceeds the client's limit of "
                                                          "{} bytes (ClientOptions::response_limit)",
                                                          im.base_url, redact_target(path), im.opts.response_limit)));
    return r->status;
}

void Client::disconnect() { impl_->drop(); }

void Client::cancel() {
    auto* im = impl_.get();
    im->cancelled = true;
    // Runs on the thread blocked in the client's io_context (or at its next run/poll), so the
    // streams are only ever touched by that thread.
    net::post(im->ioc, [im] {
        if (im->resolving) im->resolving->cancel();
        if (im->connecting) im->connecting->cancel();
        if (!im->connected()) return;
        error_code ec;
        im->lowest().socket().cancel(ec);
    });
}

std::size_t Client::connections_opened() const { return impl_->opened; }

}  // namespace engram::http
