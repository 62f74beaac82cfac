#include "signature.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

namespace engram::gateway {
namespace {

std::string hex(const unsigned char* p, unsigned int n) {
    static const char* h = "0123456789abcdef";
    std::string out;
    out.reserve(n * 2);
    for (unsigned int i = 0; i < n; ++i) {
        out.push_back(h[p[i] >> 4]);
        out.push_back(h[p[i] & 15]);
    }
    return out;
}

}  // namespace

std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         md, &n);
    return hex(md, n);
}

std::string sha256_hex(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
    return hex(md, n);
}

bool constant_time_equal(std::string_view a, std::string_view b) {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::optional<std::map<std::string, std::string>> parse_secrets(const std::string& s) {
    std::map<std::string, std::string> out;
    std::size_t i = 0;
    while (i < s.size()) {
        auto comma = s.find(',', i);
        auto item = s.substr(i, comma == std::string::npos ? std::string::npos : comma - i);
        auto eq = item.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 >= item.size()) return std::nullopt;
        out[item.substr(0, eq)] = item.substr(eq + 1);
        if (comma == std::string::npos) break;
        i = comma + 1;
    }
    return out;
}

}  // namespace engram::gateway
