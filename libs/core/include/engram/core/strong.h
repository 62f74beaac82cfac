#pragma once
// A value wrapped in a distinct type, so a stream version can never be passed where a global
// position is expected (the mix-up is a compile error, not a bug found in production).
#include <compare>
#include <cstdint>
#include <functional>
#include <ostream>

namespace engram {

template <class T, class Tag>
class Named {
public:
    using value_type = T;
    constexpr Named() = default;
    constexpr explicit Named(T v) : v_(v) {}
    constexpr T value() const { return v_; }
    constexpr auto operator<=>(const Named&) const = default;
    constexpr Named next() const { return Named(v_ + 1); }
    friend std::ostream& operator<<(std::ostream& os, const Named& n) { return os << n.v_; }

private:
    T v_{};
};

// Global position in the log: 1, 2, 3... across all aggregates, gap-free, in commit order.
using GlobalPosition = Named<std::int64_t, struct GlobalPositionTag>;
// Version within one aggregate: 1, 2, 3..., equal to the number of events it holds.
using AggregateVersion = Named<std::int64_t, struct AggregateVersionTag>;

}  // namespace engram

template <class T, class Tag>
struct std::hash<engram::Named<T, Tag>> {
    std::size_t operator()(const engram::Named<T, Tag>& n) const noexcept { return std::hash<T>{}(n.value()); }
};
