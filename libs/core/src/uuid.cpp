#include "engram/core/uuid.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <cstdint>
#include <stdexcept>

namespace engram {

Uuid Uuid::v4() {
    Uuid u;
    if (RAND_bytes(u.b_.data(), 16) != 1) throw std::runtime_error("RAND_bytes failed");
    u.b_[6] = (u.b_[6] & 0x0f) | 0x40;
    u.b_[8] = (u.b_[8] & 0x3f) | 0x80;
    return u;
}

Uuid Uuid::v5(const Uuid& ns, std::string_view name) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha1(), nullptr);
    EVP_DigestUpdate(ctx, ns.b_.data(), 16);
    EVP_DigestUpdate(ctx, name.data(), name.size());
    EVP_DigestFinal_ex(ctx, digest, &len);
    EVP_MD_CTX_free(ctx);
    Uuid u;
    for (int i = 0; i < 16; ++i) u.b_[i] = digest[i];
    u.b_[6] = (u.b_[6] & 0x0f) | 0x50;
    u.b_[8] = (u.b_[8] & 0x3f) | 0x80;
    return u;
}

namespace {
// Every event read from the log parses its id and folds print it again: both kept branch-light.
constexpr std::array<std::int8_t, 256> kHex = [] {
    std::array<std::int8_t, 256> t{};
    for (auto& v : t) v = -1;
    for (int c = '0'; c <= '9'; ++c) t[static_cast<std::size_t>(c)] = static_cast<std::int8_t>(c - '0');
    for (int c = 'a'; c <= 'f'; ++c) t[static_cast<std::size_t>(c)] = static_cast<std::int8_t>(c - 'a' + 10);
    for (int c = 'A'; c <= 'F'; ++c) t[static_cast<std::size_t>(c)] = static_cast<std::int8_t>(c - 'A' + 10);
    return t;
}();
int hexval(char c) { return kHex[static_cast<unsigned char>(c)]; }
}  // namespace

std::optional<Uuid> Uuid::parse(std::string_view s) {
    if (s.size() != 36) return std::nullopt;
    Uuid u;
    int bi = 0;
    for (std::size_t i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return std::nullopt;
            ++i;
            continue;
        }
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        u.b_[bi++] = static_cast<std::uint8_t>(hi * 16 + lo);
        i += 2;
    }
    return u;
}

std::string Uuid::str() const {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out(36, '-');
    std::size_t o = 0;
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) ++o;
        out[o++] = hex[b_[i] >> 4];
        out[o++] = hex[b_[i] & 15];
    }
    return out;
}

bool Uuid::is_nil() const {
    for (auto b : b_)
        if (b) return false;
    return true;
}

}  // namespace engram
