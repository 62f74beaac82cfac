#pragma once
// Expected failures as values. An Error carries a stable machine code (the `error` field of the
// HTTP API), a human sentence, and optional extra fields (e.g. `expected`/`actual`).
#include <nlohmann/json_fwd.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <variant>

namespace engram {

struct Error {
    std::string code;                                 // e.g. "version_conflict"
    std::string detail;                               // one human sentence
    nlohmann::json extra = nlohmann::json::object();  // merged into the error body

    static Error make(std::string code, std::string detail) {
        return Error{std::move(code), std::move(detail), nlohmann::json::object()};
    }
};

template <class T>
class [[nodiscard]] Result {
public:
    Result(T v) : v_(std::in_place_index<0>, std::move(v)) {}
    Result(Error e) : v_(std::in_place_index<1>, std::move(e)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }
    bool has_error() const { return !ok(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }

    const Error& error() const& { return std::get<1>(v_); }
    Error&& error() && { return std::get<1>(std::move(v_)); }

private:
    std::variant<T, Error> v_;
};

struct Ok {};
using Status = Result<Ok>;
inline Status ok() { return Ok{}; }

}  // namespace engram
