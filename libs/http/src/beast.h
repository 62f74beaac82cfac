#pragma once
// Private: the Beast/Asio headers server.cpp and client.cpp use. Never include from a public header.
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

namespace engram::http::detail {
namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

// Beast 1.74 speaks boost::string_view.
inline std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }
inline beast::string_view bsv(std::string_view s) { return {s.data(), s.size()}; }

inline std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

// Copies a Beast header block into a map with lower-cased names; repeated fields are joined with ", ".
template <class Fields>
void copy_headers(const Fields& fields, std::map<std::string, std::string>& out) {
    for (const auto& f : fields) {
        auto name = lower(sv(f.name_string()));
        auto [it, inserted] = out.try_emplace(std::move(name), std::string(sv(f.value())));
        if (!inserted) {
            it->second += ", ";
            it->second += sv(f.value());
        }
    }
}

}  // namespace engram::http::detail
