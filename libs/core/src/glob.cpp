#include "engram/core/glob.h"

namespace engram {

bool glob_valid(std::string_view p) {
    if (p.empty()) return false;
    auto star = p.find('*');
    return star == std::string_view::npos || star == p.size() - 1;
}

bool glob_match(std::string_view p, std::string_view v) {
    if (!p.empty() && p.back() == '*') return v.substr(0, p.size() - 1) == p.substr(0, p.size() - 1);
    return p == v;
}

}  // namespace engram
