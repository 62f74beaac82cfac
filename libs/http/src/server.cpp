#include "engram/http/server.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "beast.h"
#include "engram/http/url.h"

namespace engram::http {
namespace {

using namespace detail;

constexpr std::size_t kHeaderLimit = 16 * 1024;
constexpr std::size_t kLingerBytes = 8 << 20;   // drained after an error answer at most
constexpr std::chrono::seconds kLingerTime{2};  // ... for at most this long
// Connections over max_connections still get their 503 (and a linger, so the client reads it rather
// than a reset); past this many being refused at once, further ones are closed without a word.
constexpr std::size_t kMaxRefusing = 64;

// Handlers run here, at most `max_queued` waiting. stop() drops what is queued (their Responders
// answer nothing: the server is stopping) and joins the threads once the running handlers return.
class WorkerPool {
public:
    enum class Submit { queued, full, stopping };

    void start(int n, std::size_t max_queued) {
        max_queued_ = max_queued;
        for (int i = 0; i < std::max(1, n); ++i) threads_.emplace_back([this] { run(); });
    }
    Submit submit(std::function<void()> task) {
        {
            std::lock_guard lk(mu_);
            if (stopping_) return Submit::stopping;
            if (tasks_.size() >= max_queued_) return Submit::full;
            tasks_.push_back(std::move(task));
        }
        cv_.notify_one();
        return Submit::queued;
    }
    std::size_t queued() const {
        std::lock_guard lk(mu_);
        return tasks_.size();
    }
    void stop() {
        std::deque<std::function<void()>> dropped;
        {
            std::lock_guard lk(mu_);
            stopping_ = true;
            dropped.swap(tasks_);
        }
        cv_.notify_all();
        dropped.clear();
        for (auto& t : threads_)
            if (t.joinable()) t.join();
        threads_.clear();
    }

private:
    void run() {
        for (;;) {
            std::function<void()> task;
            {
                std::unique_lock lk(mu_);
                cv_.wait(lk, [&] { return stopping_ || !tasks_.empty(); });
                if (tasks_.empty()) return;
                task = std::move(tasks_.front());
                tasks_.pop_front();
            }
            task();
        }
    }

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> tasks_;
    std::vector<std::thread> threads_;
    std::size_t max_queued_ = 0;
    bool stopping_ = false;
};

class Session;

// State shared by the server, its connections, and the Responders/Streams handed to handlers (which
// may outlive the Server: they keep the Core, hence the io_context their sockets need, alive).
struct Core : std::enable_shared_from_this<Core> {
    Core(ServerOptions o, Handler h)
        : opts(std::move(o)), handler(std::move(h)), ioc(std::max(1, opts.io_threads)), acceptor(net::make_strand(ioc)) {}

    // Posts to a connection's strand unless the server is stopping (then false: stop() has closed or
    // will close every connection, and nobody runs the io_context any more).
    template <class F>
    bool post(const net::any_io_executor& ex, F&& f) {
        std::lock_guard lk(mu);
        if (stopped) return false;
        net::post(ex, std::forward<F>(f));
        return true;
    }
    enum class Admit { serve, refuse, drop };
    // Registers a new connection: served while under max_connections, else refused with a 503 (or,
    // when too many are being refused already or the server stops, dropped at once).
    Admit add(Session* s, std::weak_ptr<Session> w) {
        std::lock_guard lk(mu);
        if (stopped) return Admit::drop;
        Admit a = Admit::serve;
        if (served >= opts.max_connections) a = refusing < kMaxRefusing ? Admit::refuse : Admit::drop;
        if (a == Admit::drop) return a;
        ++(a == Admit::serve ? served : refusing);
        sessions.emplace(s, std::move(w));
        return a;
    }
    void remove(Session* s, bool refused) {
        std::lock_guard lk(mu);
        if (sessions.erase(s) == 0) return;
        --(refused ? refusing : served);
    }
    std::size_t open_connections() {
        std::lock_guard lk(mu);
        return served;
    }
    void invoke(Request& req, const std::shared_ptr<Responder>& res);
    void do_accept();

    ServerOptions opts;
    Handler handler;
    net::io_context ioc;
    // Keeps run() going until stop() has queued every close: without it the io_context may run out
    // of work (e.g. the listener closed, an idle connection kept only by a handler's Stream) and
    // leave later posts queued forever.
    std::optional<net::executor_work_guard<net::io_context::executor_type>> work{ioc.get_executor()};
    tcp::acceptor acceptor;
    WorkerPool pool;
    std::atomic<std::size_t> open_streams{0};

    std::mutex mu;
    bool stopped = false;
    std::unordered_map<Session*, std::weak_ptr<Session>> sessions;  // served and refused ones
    std::size_t served = 0;                                         // counted against max_connections
    std::size_t refusing = 0;                                       // being answered 503 and closed
};

std::string frame_chunk(std::string chunk, bool chunked) {
    if (!chunked) return chunk;
    std::string out = fmt::format("{:x}\r\n", chunk.size());
    out.reserve(out.size() + chunk.size() + 2);
    out += chunk;
    out += "\r\n";
    return out;
}

bool framing_header(std::string_view lower_name) {
    return lower_name == "content-length" || lower_name == "transfer-encoding" || lower_name == "connection";
}

bool safe_header(const std::string& name, const std::string& value) {
    auto bad = [](const std::string& s) { return s.find_first_of("\r\n") != std::string::npos; };
    return !name.empty() && !bad(name) && !bad(value);
}

// The queue of one streamed response. Written from any thread; drained by its connection's strand.
class StreamImpl : public std::enable_shared_from_this<StreamImpl> {
public:
    enum class Take { idle, data, finish, abort };

    StreamImpl(std::shared_ptr<Session> s, std::shared_ptr<Core> core, std::size_t limit, bool chunked)
        : session_(std::move(s)), core_(std::move(core)), limit_(limit), chunked_(chunked) {
        core_->open_streams.fetch_add(1);
    }
    ~StreamImpl() { terminate(); }

    bool chunked() const { return chunked_; }

    void push_head(std::string head) {
        std::lock_guard lk(mu_);
        queued_ += head.size();
        queue_.push_back(std::move(head));
        scheduled_ = true;  // begin_stream() pumps
    }

    bool write(std::string chunk);
    void close();
    bool closed() const {
        std::lock_guard lk(mu_);
        return closed_;
    }
    std::size_t queued_bytes() const {
        std::lock_guard lk(mu_);
        return queued_;
    }
    void on_close(std::function<void()> cb) {
        {
            std::lock_guard lk(mu_);
            if (!fired_) {
                callbacks_.push_back(std::move(cb));
                return;
            }
        }
        run_callback(cb);
    }

    // Strand side.
    Take take(std::vector<std::string>& out, std::size_t& bytes) {
        std::lock_guard lk(mu_);
        if (aborted_) return Take::abort;
        if (!queue_.empty()) {
            bytes = 0;
            for (auto& s : queue_) {
                bytes += s.size();
                out.push_back(std::move(s));
            }
            queue_.clear();
            inflight_ = bytes;
            return Take::data;
        }
        if (closed_) return Take::finish;
        scheduled_ = false;
        return Take::idle;
    }
    void written(std::size_t bytes) {
        std::lock_guard lk(mu_);
        queued_ -= std::min(bytes, queued_);
        inflight_ = 0;
    }
    // The stream has ended: refuse writes and fire on_close (once).
    void terminate() {
        std::vector<std::function<void()>> cbs;
        {
            std::lock_guard lk(mu_);
            closed_ = true;
            if (fired_) return;
            fired_ = true;
            cbs.swap(callbacks_);
            queue_.clear();
            queued_ = inflight_;
        }
        core_->open_streams.fetch_sub(1);
        for (auto& cb : cbs) run_callback(cb);
    }

private:
    static void run_callback(const std::function<void()>& cb) {
        try {
            if (cb) cb();
        } catch (const std::exception& e) {
            spdlog::warn("http: stream on_close callback threw: {}", e.what());
        } catch (...) {
            spdlog::warn("http: stream on_close callback threw");
        }
    }

    std::shared_ptr<Session> session_;
    std::shared_ptr<Core> core_;
    const std::size_t limit_;
    const bool chunked_;

    mutable std::mutex mu_;
    std::deque<std::string> queue_;
    std::size_t queued_ = 0;    // queue_ + inflight_
    std::size_t inflight_ = 0;  // taken by the strand, being written
    bool scheduled_ = false;    // a pump is posted or a write is in flight
    bool closed_ = false;
    bool aborted_ = false;
    bool fired_ = false;
    std::vector<std::function<void()>> callbacks_;
};

// What a handler holds: dropping it closes the stream.
class StreamHandle : public Stream {
public:
    explicit StreamHandle(std::shared_ptr<StreamImpl> impl) : impl_(std::move(impl)) {}
    ~StreamHandle() override { impl_->close(); }
    bool write(std::string chunk) override { return impl_->write(std::move(chunk)); }
    void close() override { impl_->close(); }
    bool closed() const override { return impl_->closed(); }
    std::size_t queued_bytes() const override { return impl_->queued_bytes(); }
    void on_close(std::function<void()> cb) override { impl_->on_close(std::move(cb)); }

private:
    std::shared_ptr<StreamImpl> impl_;
};

// Returned by a Responder that has already answered.
class ClosedStream : public Stream {
public:
    bool write(std::string) override { return false; }
    void close() override {}
    bool closed() const override { return true; }
    std::size_t queued_bytes() const override { return 0; }
    void on_close(std::function<void()> cb) override {
        if (cb) cb();
    }
};

// One connection. Everything but the post_* entry points runs on its strand.
class Session : public std::enable_shared_from_this<Session> {
public:
    Session(std::shared_ptr<Core> core, tcp::socket socket)
        : core_(std::move(core)), stream_(std::move(socket)), ex_(stream_.get_executor()), timer_(ex_) {
        error_code ec;
        auto ep = stream_.socket().remote_endpoint(ec);
        if (!ec) remote_ = fmt::format("{}:{}", ep.address().to_string(), ep.port());
    }
    ~Session() { core_->remove(this, refused_); }

    const net::any_io_executor& executor() const { return ex_; }

    void start() {
        net::dispatch(ex_, [self = shared_from_this()] { self->do_read(); });
    }
    // Closes a connection that is neither served nor refused (too many refused at once, stopping).
    void drop() {
        net::dispatch(ex_, [self = shared_from_this()] { self->close_now(); });
    }
    // Over max_connections: the 503 at once, without reading the request (the linger drains it).
    void refuse() {
        refused_ = true;
        net::dispatch(ex_, [self = shared_from_this()] {
            self->write_error(503, "overloaded",
                              fmt::format("the server has too many open connections (limit {}); retry later",
                                          self->core_->opts.max_connections),
                              {{"Retry-After", "1"}});
        });
    }

    // Any thread.
    void post_response(Response r) {
        core_->post(ex_, [self = shared_from_this(), r = std::move(r)]() mutable { self->write_response(std::move(r)); });
    }
    std::shared_ptr<Stream> open_stream(int status, std::string content_type, Headers headers, unsigned version);
    void post_pump(const std::shared_ptr<StreamImpl>& s) {
        if (!core_->post(ex_, [self = shared_from_this()] { self->pump(); })) s->terminate();
    }
    void post_abort(const std::shared_ptr<StreamImpl>& s) {
        if (!core_->post(ex_, [self = shared_from_this(), s] {
                if (self->stream_obj_ == s) self->end_stream(false);
            }))
            s->terminate();
    }
    void post_close(const std::shared_ptr<StreamImpl>& s) {
        if (!core_->post(ex_, [self = shared_from_this(), s] {
                if (self->stream_obj_ != s) return;
                self->arm_close_deadline();
                self->pump();
            }))
            s->terminate();
    }

    // Strand: closes the connection at once (server stop, errors).
    void close_now() {
        if (closed_) return;
        closed_ = true;
        timer_.cancel();
        if (auto s = std::move(stream_obj_)) {
            streaming_ = false;
            s->terminate();
        }
        error_code ec;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
        stream_.close();
    }

private:
    void do_read() {
        if (closed_) return;
        parser_.emplace();
        parser_->body_limit(core_->opts.body_limit);
        parser_->header_limit(kHeaderLimit);
        stream_.expires_after(core_->opts.idle_timeout);
        bhttp::async_read_header(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_header, shared_from_this()));
    }

    void on_header(error_code ec, std::size_t n) {
        if (closed_) return;
        if (ec || parser_->is_done()) return on_read(ec, n);
        stream_.expires_after(core_->opts.idle_timeout);  // the body gets a window of its own
        // A client that asks before sending its body (curl does for large ones) gets the go-ahead;
        // a too-large body has already been refused by the parser at this point.
        if (beast::iequals(parser_->get()[bhttp::field::expect], "100-continue")) {
            static const std::string go_ahead = "HTTP/1.1 100 Continue\r\n\r\n";
            net::async_write(stream_, net::buffer(go_ahead), [self = shared_from_this()](error_code ec, std::size_t) {
                if (self->closed_) return;
                if (ec) return self->close_now();
                self->read_body();
            });
            return;
        }
        read_body();
    }

    void read_body() {
        bhttp::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_read, shared_from_this()));
    }

    void on_read(error_code ec, std::size_t) {
        if (closed_) return;
        if (ec == bhttp::error::body_limit) {
            write_error(413, "payload_too_large",
                        fmt::format("request body exceeds the limit of {} bytes", core_->opts.body_limit));
            return;
        }
        if (ec) {
            // A parse error after some bytes is the client's mistake; anything else (idle timeout,
            // closed or reset connection) just ends the connection.
            if (parser_->got_some() && ec.category() == bhttp::make_error_code(bhttp::error::bad_target).category() &&
                ec != bhttp::error::partial_message && ec != bhttp::error::end_of_stream) {
                write_error(400, "bad_request", fmt::format("malformed HTTP request: {}", ec.message()));
            } else {
                close_now();
            }
            return;
        }

        auto& msg = parser_->get();
        Request req;
        req.method = std::string(msg.method_string());
        req.target = std::string(msg.target());
        std::string_view target = req.target;
        auto q = target.find('?');
        req.path = url_decode(target.substr(0, q));
        if (q != std::string_view::npos) req.query = parse_query(target.substr(q + 1));
        copy_headers(msg, req.headers);
        req.body = std::move(msg.body());
        req.remote = remote_;
        req.version = static_cast<int>(msg.version());
        version_ = msg.version();
        keep_alive_ = msg.keep_alive();
        head_ = msg.method() == bhttp::verb::head;
        parser_.reset();

        auto responder = std::make_shared<ResponderImpl>(shared_from_this(), version_);
        if (core_->opts.run_inline && core_->opts.run_inline(req)) {
            std::shared_ptr<Responder> r = responder;
            core_->invoke(req, r);
            return;
        }
        auto queued = core_->pool.submit([core = core_, req = std::move(req), responder]() mutable {
            std::shared_ptr<Responder> r = std::move(responder);
            core->invoke(req, r);
        });
        if (queued == WorkerPool::Submit::stopping) return close_now();
        if (queued == WorkerPool::Submit::full) {
            // Answered here, on the I/O thread, without a worker; the connection stays usable.
            auto r = Response::error(
                503, "overloaded",
                fmt::format("the server's request queue is full ({} waiting); retry later", core_->opts.max_queued));
            r.headers.emplace_back("Retry-After", "1");
            responder->respond(std::move(r));
        }
    }

    void write_error(int status, std::string_view code, std::string detail, Headers headers = {}) {
        version_ = 11;
        keep_alive_ = false;
        head_ = false;
        auto r = Response::error(status, code, detail);
        r.headers = std::move(headers);
        write_response(std::move(r));
    }

    void write_response(Response r) {
        if (closed_ || streaming_) return;
        auto res = std::make_shared<bhttp::response<bhttp::string_body>>();
        res->version(version_);
        res->result(static_cast<unsigned>(r.status));
        res->set(bhttp::field::server, "engram");
        if (!r.content_type.empty()) res->set(bhttp::field::content_type, bsv(r.content_type));
        bool keep = keep_alive_;
        for (auto& [name, value] : r.headers) {
            auto lname = lower(name);
            if (lname == "connection" && lower(value) == "close") keep = false;
            if (framing_header(lname) || !safe_header(name, value)) continue;
            res->insert(bsv(name), bsv(value));
        }
        res->body() = std::move(r.body);
        res->keep_alive(keep);
        res->prepare_payload();
        if (head_) res->body().clear();  // Content-Length stays that of the GET
        stream_.expires_after(core_->opts.idle_timeout);
        bhttp::async_write(stream_, *res, [self = shared_from_this(), res](error_code ec, std::size_t) {
            self->on_write(ec, !res->keep_alive());
        });
    }

    void on_write(error_code ec, bool close) {
        if (closed_) return;
        if (ec) return close_now();
        if (close) return linger_close();
        do_read();
    }

    // Half-close, then read and drop what the client still sends (e.g. the rest of a too-large body)
    // until it closes, so that closing does not reset the connection before it read our answer.
    void linger_close() {
        error_code ec;
        stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
        stream_.expires_never();
        drained_ = 0;
        timer_.expires_after(std::min<std::chrono::steady_clock::duration>(kLingerTime, core_->opts.idle_timeout));
        timer_.async_wait([self = shared_from_this()](error_code ec) {
            if (ec != net::error::operation_aborted) self->close_now();
        });
        drain();
    }
    void drain() {
        stream_.socket().async_read_some(net::buffer(scratch_), [self = shared_from_this()](error_code ec, std::size_t n) {
            if (self->closed_) return;
            self->drained_ += n;
            if (ec || self->drained_ > kLingerBytes) return self->close_now();
            self->drain();
        });
    }

    // ---- streaming ----
    friend class StreamImpl;

    void begin_stream(const std::shared_ptr<StreamImpl>& s) {
        if (closed_ || streaming_) return s->terminate();
        streaming_ = true;
        stream_obj_ = s;
        stream_.expires_never();
        if (s->closed()) arm_close_deadline();
        detect_disconnect();
        pump();
    }

    // Keeps a read pending so that a client going away is noticed even when nothing is written.
    void detect_disconnect() {
        stream_.socket().async_read_some(net::buffer(scratch_), [self = shared_from_this()](error_code ec, std::size_t) {
            if (self->closed_ || !self->streaming_) return;
            if (ec) return self->end_stream(false);
            self->detect_disconnect();  // a client may send anything; it is ignored
        });
    }

    void pump() {
        if (closed_ || !streaming_ || writing_) return;
        batch_.clear();
        batch_bytes_ = 0;
        switch (stream_obj_->take(batch_, batch_bytes_)) {
            case StreamImpl::Take::idle:
                return;
            case StreamImpl::Take::abort:
                return end_stream(false);
            case StreamImpl::Take::finish:
                if (!stream_obj_->chunked()) return end_stream(true);
                batch_.emplace_back("0\r\n\r\n");
                writing_ = true;
                net::async_write(stream_.socket(), net::buffer(batch_.back()),
                                 [self = shared_from_this()](error_code ec, std::size_t) {
                                     self->writing_ = false;
                                     if (self->closed_) return;
                                     self->end_stream(!ec);
                                 });
                return;
            case StreamImpl::Take::data: {
                std::vector<net::const_buffer> bufs;
                bufs.reserve(batch_.size());
                for (const auto& b : batch_) bufs.push_back(net::buffer(b));
                writing_ = true;
                net::async_write(stream_.socket(), bufs, [self = shared_from_this()](error_code ec, std::size_t) {
                    self->writing_ = false;
                    if (self->closed_ || !self->streaming_) return;
                    self->stream_obj_->written(self->batch_bytes_);
                    if (ec) return self->end_stream(false);
                    self->pump();
                });
                return;
            }
        }
    }

    // A gracefully closed stream still waiting on a stalled client is cut off after idle_timeout.
    void arm_close_deadline() {
        timer_.expires_after(core_->opts.idle_timeout);
        timer_.async_wait([self = shared_from_this()](error_code ec) {
            if (ec == net::error::operation_aborted || self->closed_ || !self->streaming_) return;
            self->end_stream(false);
        });
    }

    void end_stream(bool graceful) {
        if (!streaming_) return;
        if (graceful) {
            error_code ec;
            stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
        }
        close_now();  // fires on_close
    }

    class ResponderImpl : public Responder {
    public:
        ResponderImpl(std::shared_ptr<Session> s, unsigned version) : session_(std::move(s)), version_(version) {}
        ~ResponderImpl() override {
            if (used_.exchange(true)) return;
            try {
                session_->post_response(Response::error(500, "internal", "the handler did not answer"));
            } catch (...) {}
        }
        void respond(Response r) override {
            if (used_.exchange(true)) return;
            session_->post_response(std::move(r));
        }
        std::shared_ptr<Stream> start_stream(int status, std::string content_type, Headers headers) override {
            if (used_.exchange(true)) return std::make_shared<ClosedStream>();
            return session_->open_stream(status, std::move(content_type), std::move(headers), version_);
        }

    private:
        std::shared_ptr<Session> session_;
        unsigned version_;
        std::atomic<bool> used_{false};
    };

    std::shared_ptr<Core> core_;
    beast::tcp_stream stream_;
    net::any_io_executor ex_;  // the connection's strand
    net::steady_timer timer_;
    beast::flat_buffer buffer_;
    std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
    std::string remote_;
    std::array<char, 4096> scratch_{};
    std::size_t drained_ = 0;
    unsigned version_ = 11;
    bool keep_alive_ = true;
    bool head_ = false;
    bool closed_ = false;
    bool refused_ = false;  // over max_connections: answered 503 and closed

    bool streaming_ = false;
    bool writing_ = false;
    std::shared_ptr<StreamImpl> stream_obj_;
    std::vector<std::string> batch_;
    std::size_t batch_bytes_ = 0;
};

bool StreamImpl::write(std::string chunk) {
    if (chunk.empty()) return !closed();
    std::string frame = frame_chunk(std::move(chunk), chunked_);
    bool pump = false, cut_off = false;
    {
        std::lock_guard lk(mu_);
        if (closed_) return false;
        if (queued_ + frame.size() > limit_) {
            // A client this far behind is cut off; the writer never waits for it.
            closed_ = true;
            aborted_ = cut_off = true;
            queue_.clear();
            queued_ = inflight_;
        } else {
            queued_ += frame.size();
            queue_.push_back(std::move(frame));
            if (!scheduled_) pump = scheduled_ = true;
        }
    }
    if (cut_off) {
        session_->post_abort(shared_from_this());
        return false;
    }
    if (pump) session_->post_pump(shared_from_this());
    return true;
}

void StreamImpl::close() {
    {
        std::lock_guard lk(mu_);
        if (closed_) return;
        closed_ = true;
    }
    session_->post_close(shared_from_this());
}

std::shared_ptr<Stream> Session::open_stream(int status, std::string content_type, Headers headers, unsigned version) {
    bool chunked = version >= 11;
    auto reason = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
    std::string head =
        fmt::format("HTTP/{}.{} {} {}\r\n", version / 10, version % 10, status, std::string_view(reason.data(), reason.size()));
    head += "Server: engram\r\n";
    if (!content_type.empty() && safe_header("content-type", content_type)) head += "Content-Type: " + content_type + "\r\n";
    head += "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n";
    head += chunked ? "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n" : "Connection: close\r\n";
    for (auto& [name, value] : headers) {
        auto lname = lower(name);
        if (framing_header(lname) || lname == "cache-control" || lname == "content-type" || !safe_header(name, value)) continue;
        head += name + ": " + value + "\r\n";
    }
    head += "\r\n";

    auto impl = std::make_shared<StreamImpl>(shared_from_this(), core_, core_->opts.stream_queue_limit, chunked);
    impl->push_head(std::move(head));
    if (!core_->post(ex_, [self = shared_from_this(), impl] { self->begin_stream(impl); })) impl->terminate();
    return std::make_shared<StreamHandle>(std::move(impl));
}

void Core::invoke(Request& req, const std::shared_ptr<Responder>& res) {
    try {
        handler(req, res);
        return;
    } catch (const std::exception& e) {
        spdlog::warn("http: handler for {} {} threw: {}", req.method, redact_target(req.target), e.what());
        res->respond(Response::error(500, "internal", e.what()));
    } catch (...) {
        spdlog::warn("http: handler for {} {} threw a non-exception", req.method, redact_target(req.target));
        res->respond(Response::error(500, "internal", "unknown error"));
    }
}

void Core::do_accept() {
    acceptor.async_accept(net::make_strand(ioc), [self = shared_from_this()](error_code ec, tcp::socket socket) {
        if (ec == net::error::operation_aborted || !self->acceptor.is_open()) return;
        if (ec) {
            // E.g. out of file descriptors: back off a little instead of spinning.
            spdlog::warn("http: accept failed: {}", ec.message());
            auto timer = std::make_shared<net::steady_timer>(self->acceptor.get_executor(), std::chrono::milliseconds(50));
            timer->async_wait([self, timer](error_code ec) {
                if (!ec && self->acceptor.is_open()) self->do_accept();
            });
            return;
        }
        error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        auto session = std::make_shared<Session>(self, std::move(socket));
        switch (self->add(session.get(), session)) {
            case Admit::serve:
                session->start();
                break;
            case Admit::refuse:
                session->refuse();
                break;
            case Admit::drop:
                session->drop();
                break;
        }
        self->do_accept();
    });
}

}  // namespace

struct Server::Impl {
    ServerOptions opts;
    Handler handler;
    std::shared_ptr<Core> core;
    std::vector<std::thread> io_threads;
    std::uint16_t port = 0;
    bool stopped = false;
};

Server::Server(ServerOptions opts, Handler handler) : impl_(std::make_unique<Impl>()) {
    impl_->opts = std::move(opts);
    impl_->handler = std::move(handler);
}

Server::~Server() { stop(); }

void Server::start() {
    auto& im = *impl_;
    if (im.core || im.stopped) throw std::runtime_error("http server: start() called twice");
    auto core = std::make_shared<Core>(im.opts, im.handler);
    const auto& host = im.opts.host;
    auto where = fmt::format("{}:{}", host, im.opts.port);

    error_code ec;
    tcp::endpoint ep;
    auto addr = net::ip::make_address(host, ec);
    if (!ec) {
        ep = tcp::endpoint(addr, im.opts.port);
    } else {
        tcp::resolver resolver(core->ioc);
        auto results = resolver.resolve(host, std::to_string(im.opts.port), tcp::resolver::passive, ec);
        if (ec || results.empty())
            throw std::runtime_error(fmt::format("cannot listen on {}: cannot resolve host: {}", where, ec.message()));
        ep = results.begin()->endpoint();
    }
    auto& acc = core->acceptor;
    acc.open(ep.protocol(), ec);
    if (!ec) acc.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acc.bind(ep, ec);
    if (!ec) acc.listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw std::runtime_error(fmt::format("cannot listen on {}: {}", where, ec.message()));
    im.port = acc.local_endpoint(ec).port();

    core->pool.start(im.opts.worker_threads, std::max<std::size_t>(1, im.opts.max_queued));
    core->do_accept();
    for (int i = 0; i < std::max(1, im.opts.io_threads); ++i) {
        im.io_threads.emplace_back([core] {
            for (;;) {
                try {
                    core->ioc.run();
                    return;
                } catch (const std::exception& e) {
                    spdlog::error("http: exception on an I/O thread: {}", e.what());
                }
            }
        });
    }
    im.core = std::move(core);
}

void Server::stop() {
    auto& im = *impl_;
    if (im.stopped || !im.core) return;
    im.stopped = true;
    auto core = im.core;
    std::vector<std::shared_ptr<Session>> sessions;
    {
        std::lock_guard lk(core->mu);
        core->stopped = true;
        for (auto& [ptr, weak] : core->sessions)
            if (auto s = weak.lock()) sessions.push_back(std::move(s));
    }
    net::post(core->acceptor.get_executor(), [core] {
        error_code ec;
        core->acceptor.close(ec);
    });
    for (auto& s : sessions) net::post(s->executor(), [s] { s->close_now(); });
    sessions.clear();
    core->pool.stop();   // no handler can post any more (core->stopped), queued ones are dropped
    core->work.reset();  // run() returns once the closes above and the aborted operations are done
    for (auto& t : im.io_threads) t.join();
    im.io_threads.clear();
    // Belt and braces: run whatever is left (nothing, normally) so no handler keeps a Session alive.
    core->ioc.restart();
    while (core->ioc.poll() > 0) {}
    // im.core stays (idle) until ~Server, so port() and open_streams() stay valid from any thread.
}

std::uint16_t Server::port() const { return impl_->port; }

std::size_t Server::open_streams() const { return impl_->core ? impl_->core->open_streams.load() : 0; }

std::size_t Server::open_connections() const { return impl_->core ? impl_->core->open_connections() : 0; }

std::size_t Server::queued_requests() const { return impl_->core ? impl_->core->pool.queued() : 0; }

}  // namespace engram::http
