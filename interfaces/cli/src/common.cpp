#include "common.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "engram/http/url.h"

namespace engram::cli {

void fail(const std::string& msg) { throw Failure(kExitFailure, msg); }
void usage(const std::string& msg) { throw Failure(kExitUsage, msg); }

std::string one_line(std::string_view s) {
    std::string out;
    bool space = false;
    for (char c : s) {
        if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
            space = !out.empty();
            continue;
        }
        if (space) out += ' ';
        space = false;
        out += c;
    }
    return out;
}

Store::Store(const Globals& g)
    : url_(g.url), client_(g.url, [&] {
          http::ClientOptions o;
          o.response_limit = http::kStorePageResponseLimit;  // pages of up to 1000 events
          if (!g.token.empty()) o.default_headers.emplace_back("Authorization", "Bearer " + g.token);
          return o;
      }()) {}

void Store::transport_failure(const Error& e) {
    if (e.code == "bad_url") usage("bad --url '" + url_ + "': " + one_line(e.detail));
    fail("cannot reach the event store at " + url_ + ": " + one_line(e.detail));
}

void Store::http_failure(const http::ClientResponse& r) {
    auto j = r.json();
    std::string msg = "event store answered " + std::to_string(r.status);
    if (j.is_object() && j.contains("error")) {
        msg += " " + (j["error"].is_string() ? j["error"].get<std::string>() : j["error"].dump());
        if (j.contains("detail") && j["detail"].is_string()) msg += ": " + j["detail"].get<std::string>();
    } else if (!r.body.empty()) {
        msg += ": " + truncate(r.body, 200);
    }
    fail(one_line(msg));
}

std::optional<nlohmann::json> Store::get(const std::string& path_and_query, bool allow_404) {
    auto r = client_.get(path_and_query);
    if (!r) transport_failure(r.error());
    if (allow_404 && r->status == 404) return std::nullopt;
    if (r->status < 200 || r->status >= 300) http_failure(*r);
    auto j = r->json(events::kMaxStoreAnswerDepth);
    if (j.is_discarded()) fail("event store answered " + std::to_string(r->status) + " with a body that is not JSON");
    return j;
}

nlohmann::json Store::post(const std::string& path, const nlohmann::json& body, int* status) {
    auto r = client_.post_json(path, body);
    if (!r) transport_failure(r.error());
    if (r->status < 200 || r->status >= 300) http_failure(*r);
    if (status) *status = r->status;
    auto j = r->json();
    if (j.is_discarded()) fail("event store answered " + std::to_string(r->status) + " with a body that is not JSON");
    return j;
}

events::Event parse_event(const nlohmann::json& j) {
    auto e = events::Event::from_json(j);
    if (!e) fail("unexpected event from the event store: " + one_line(e.error().detail));
    return std::move(e).value();
}

projections::SessionReader session_reader(Store& store) {
    return projections::store_session_reader(
        [&store](const std::string& session, std::int64_t from, int limit) -> Result<nlohmann::json> {
            auto page = store.get("/aggregates/" + http::url_encode(session) + "/events?from_version=" + std::to_string(from) +
                                      "&limit=" + std::to_string(limit),
                                  true);
            if (!page) return nlohmann::json{{"events", nlohmann::json::array()}};
            return *page;
        });
}

void add_param(std::string& q, std::string_view name, std::string_view value) {
    if (value.empty()) return;
    q += '&';
    q += name;
    q += '=';
    q += http::url_encode(value);
}

static std::size_t cp_len(std::string_view s) {
    std::size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

std::string truncate(std::string_view s, std::size_t max) {
    if (cp_len(s) <= max) return std::string(s);
    std::string out;
    std::size_t n = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if ((c & 0xC0) != 0x80) {
            if (n == max - 1) break;
            ++n;
        }
        out += s[i];
    }
    return out + "…";
}

std::string short_json(const nlohmann::json& j, std::size_t max) {
    return truncate(one_line(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)), max);
}

void Table::print(std::FILE* out) const {
    std::vector<std::size_t> w(header_.size(), 0);
    auto widen = [&](const std::vector<std::string>& r) {
        for (std::size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], cp_len(r[i]));
    };
    widen(header_);
    for (const auto& r : rows_) widen(r);
    auto line = [&](const std::vector<std::string>& r) {
        std::string s;
        for (std::size_t i = 0; i < w.size(); ++i) {
            const std::string cell = i < r.size() ? r[i] : "";
            s += cell;
            if (i + 1 < w.size()) s += std::string(w[i] - cp_len(cell) + 2, ' ');
        }
        while (!s.empty() && s.back() == ' ') s.pop_back();
        std::fprintf(out, "%s\n", s.c_str());
    };
    line(header_);
    for (const auto& r : rows_) line(r);
}

bool stderr_is_tty() { return ::isatty(2) == 1; }

static std::int64_t now_ms_steady() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Progress::Progress(std::string label, std::int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled) {}

Progress::~Progress() {
    if (enabled_ && !finished_) std::fputs("\n", stderr);
}

void Progress::update(std::int64_t done) {
    done_ = done;
    if (!enabled_) return;
    auto now = now_ms_steady();
    if (now - last_draw_ms_ < 100) return;
    last_draw_ms_ = now;
    draw();
}

void Progress::draw() {
    constexpr int kWidth = 30;
    double frac = total_ > 0 ? std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_)) : 1.0;
    int filled = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar += std::string(static_cast<std::size_t>(kWidth - filled), '.');
    std::fprintf(stderr, "\r%s [%s] %lld/%lld events %3d%%", label_.c_str(), bar.c_str(), static_cast<long long>(done_),
                 static_cast<long long>(total_), static_cast<int>(frac * 100));
    std::fflush(stderr);
}

void Progress::finish() {
    if (!enabled_ || finished_) return;
    finished_ = true;
    draw();
    std::fputs("\n", stderr);
    std::fflush(stderr);
}

}  // namespace engram::cli
