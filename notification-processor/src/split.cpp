#include "split.h"

namespace engram::notification {

namespace {

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Byte length of the sequence starting at s[i] (1 for an invalid lead or a truncated sequence).
std::size_t seq_len(std::string_view s, std::size_t i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + n > s.size()) return 1;
    for (std::size_t k = 1; k < n; ++k)
        if (!is_continuation(static_cast<unsigned char>(s[i + k]))) return 1;
    return n;
}

bool is_space(unsigned char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

}  // namespace

std::size_t telegram_length(std::string_view s) {
    std::size_t units = 0;
    for (std::size_t i = 0; i < s.size();) {
        std::size_t n = seq_len(s, i);
        units += n == 4 ? 2 : 1;
        i += n;
    }
    return units;
}

std::vector<std::string> split_message(std::string_view text, std::size_t limit) {
    std::vector<std::string> parts;
    if (limit == 0) limit = 1;
    std::string_view rest = text;
    while (!rest.empty()) {
        // fit = the longest prefix (in bytes, on a sequence boundary) within `limit` units.
        std::size_t fit = 0, units = 0;
        while (fit < rest.size()) {
            std::size_t n = seq_len(rest, fit);
            std::size_t u = n == 4 ? 2 : 1;
            if (units + u > limit) break;
            units += u;
            fit += n;
        }
        if (fit == rest.size()) {
            parts.emplace_back(rest);
            break;
        }
        if (fit == 0) fit = seq_len(rest, 0);  // limit 1 and a 2-unit character: send it alone
        // Candidate cut positions (end of the part, in bytes) per level, the last one in [1, fit].
        // A boundary may sit exactly at `fit` (the whitespace right after the window).
        std::size_t para = 0, line = 0, sentence = 0, word = 0;
        for (std::size_t i = 1; i <= fit && i < rest.size(); ++i) {
            unsigned char c = static_cast<unsigned char>(rest[i]);
            if (!is_space(c)) continue;
            unsigned char prev = static_cast<unsigned char>(rest[i - 1]);
            if (is_space(prev)) {
                if (c == '\n' && prev == '\n') para = i - 1;  // cut before the blank line
                continue;
            }
            word = i;
            if (c == '\n') line = i;
            if (prev == '.' || prev == '!' || prev == '?') sentence = i;
            // U+2026 HORIZONTAL ELLIPSIS (E2 80 A6), U+3002 IDEOGRAPHIC FULL STOP (E3 80 82)
            if (i >= 3 && (rest.substr(i - 3, 3) == "\xE2\x80\xA6" || rest.substr(i - 3, 3) == "\xE3\x80\x82")) sentence = i;
        }
        // Trailing-space runs: "a\n\nb" sets para at the first '\n'; a blank line preceded by spaces too.
        std::size_t cut = 0;
        std::size_t half = fit / 2;
        for (std::size_t cand : {para, line, sentence, word})
            if (cand > 0 && cand >= half) {
                cut = cand;
                break;
            }
        if (cut == 0)
            for (std::size_t cand : {para, line, sentence, word})
                if (cand > 0) {
                    cut = cand;
                    break;
                }
        if (cut == 0) cut = fit;
        std::string_view part = rest.substr(0, cut);
        while (!part.empty() && is_space(static_cast<unsigned char>(part.back()))) part.remove_suffix(1);
        if (part.empty()) part = rest.substr(0, cut);  // cannot happen (cut follows a non-space), kept safe
        parts.emplace_back(part);
        rest.remove_prefix(cut);
        while (!rest.empty() && is_space(static_cast<unsigned char>(rest.front()))) rest.remove_prefix(1);
    }
    if (parts.empty()) parts.emplace_back(text);
    return parts;
}

}  // namespace engram::notification
