#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace engram {

// A UUID, stored as 16 bytes, printed lower-case with dashes.
class Uuid {
public:
    Uuid() = default;
    static Uuid v4();  // random
    // Name-based (SHA-1): the deterministic ids of derived events, v5(causing event id, step name).
    static Uuid v5(const Uuid& ns, std::string_view name);
    static std::optional<Uuid> parse(std::string_view s);

    std::string str() const;
    const std::array<std::uint8_t, 16>& bytes() const { return b_; }
    bool is_nil() const;
    auto operator<=>(const Uuid&) const = default;

private:
    std::array<std::uint8_t, 16> b_{};
};

using EventId = Uuid;

}  // namespace engram

template <>
struct std::hash<engram::Uuid> {
    std::size_t operator()(const engram::Uuid& u) const noexcept {
        std::size_t h = 0;
        for (auto b : u.bytes()) h = h * 131 + b;
        return h;
    }
};
