#include "engram/core/json.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace engram {

using nlohmann::json;

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

// A token shown in a message: at most 40 bytes of it.
std::string shown(std::string_view token) {
    if (token.size() <= 40) return std::string(token);
    return std::string(token.substr(0, 40)) + "...";
}

// nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 13: <reason>; last read:
// '<bytes>'" -> <reason>. The bytes last read may be invalid UTF-8, which must not reach an answer.
std::string reason_of(const std::string& what) {
    auto col = what.find("column ");
    auto colon = what.find(": ", col == std::string::npos ? 0 : col);
    std::string reason = colon == std::string::npos ? what : what.substr(colon + 2);
    if (auto last = reason.find("; last read: "); last != std::string::npos) reason.resize(last);
    return reason;
}

// The byte (1-based) at which the first container deeper than max_depth opens; the text up to there
// is known to be well-formed, so counting brackets outside strings is enough.
std::size_t offset_of_depth(std::string_view text, int max_depth) {
    int depth = -1;
    bool in_string = false, escaped = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth) return i + 1;
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return text.size();
}

// A SAX consumer that builds the value like nlohmann's own DOM parser, and stops at the first
// container deeper than the limit or number that would not survive as written.
class Builder {
public:
    Builder(json& root, int max_depth, std::size_t size) : root_(root), max_depth_(max_depth), size_(size) {}

    enum class Refusal { none, syntax, depth, number };
    Refusal refusal = Refusal::none;
    std::string detail;  // what follows `what` in the message

    bool null() { return put(nullptr); }
    bool boolean(bool v) { return put(v); }
    bool number_integer(json::number_integer_t v) { return put(v); }
    bool number_unsigned(json::number_unsigned_t v) { return put(v); }
    bool number_float(json::number_float_t v, const std::string& token) {
        // The lexer turns an integer literal that fits no 64-bit type into a double: refuse it rather
        // than store other digits than the ones sent.
        if (token.find_first_of(".eE") == std::string::npos) return refuse_number("an integer beyond 64 bits", token);
        if (v == 0) {
            auto mantissa = std::string_view(token).substr(0, token.find_first_of("eE"));
            if (mantissa.find_first_of("123456789") != std::string_view::npos)
                return refuse_number("a number out of range", token);  // underflow: would become 0
        }
        return put(v);
    }
    bool string(std::string& v) { return put(std::move(v)); }
    bool binary(json::binary_t& v) { return put(std::move(v)); }  // never produced by the JSON lexer
    bool start_object(std::size_t) { return open(json::value_t::object); }
    bool key(std::string& k) {
        key_ = std::move(k);
        return true;
    }
    bool end_object() {
        stack_.pop_back();
        return true;
    }
    bool start_array(std::size_t) { return open(json::value_t::array); }
    bool end_array() {
        stack_.pop_back();
        return true;
    }
    bool parse_error(std::size_t position, const std::string& last_token, const json::exception& ex) {
        if (ex.id == 406) {  // out_of_range 406: the lexer's double overflowed (1e400)
            refuse_number("a number out of range", last_token);
            return false;
        }
        refusal = Refusal::syntax;
        // The lexer counts the end of the input as one more byte read.
        detail = "is not valid JSON: " + reason_of(ex.what()) + " (at byte " + std::to_string(std::min(position, size_)) + ")";
        return false;
    }

private:
    json& root_;
    int max_depth_;
    std::size_t size_;          // of the text
    std::vector<json*> stack_;  // the open containers, innermost last
    std::string key_;           // the key of the next value of the innermost object

    template <class V>
    json* place(V&& v) {
        if (stack_.empty()) {
            root_ = json(std::forward<V>(v));
            return &root_;
        }
        json& top = *stack_.back();
        if (top.is_array()) {
            top.get_ref<json::array_t&>().emplace_back(std::forward<V>(v));
            return &top.get_ref<json::array_t&>().back();
        }
        json& slot = top[key_];  // a key given twice: the last value wins, as in jsonb
        slot = json(std::forward<V>(v));
        return &slot;
    }
    template <class V>
    bool put(V&& v) {
        place(std::forward<V>(v));
        return true;
    }
    bool open(json::value_t type) {
        if (stack_.size() > static_cast<std::size_t>(max_depth_)) {
            refusal = Refusal::depth;
            return false;
        }
        stack_.push_back(place(json(type)));
        return true;
    }
    bool refuse_number(const char* what, const std::string& token) {
        refusal = Refusal::number;
        detail = std::string("has ") + what + ": " + shown(token);
        return false;
    }
};

}  // namespace

Result<json> parse_json(std::string_view text, std::string_view what, int max_depth) {
    // nlohmann's lexer takes a NUL byte for the end of the input: `{...}\0anything` would parse as
    // `{...}` with the rest ignored. A raw NUL is never valid JSON (inside a string it must be \u0000).
    if (auto nul = text.find('\0'); nul != std::string_view::npos)
        return Error::make("invalid_json",
                           std::string(what) + " is not valid JSON: a NUL byte (at byte " + std::to_string(nul + 1) + ")");
    json root;
    Builder b(root, max_depth < 0 ? 0 : max_depth, text.size());
    bool ok = json::sax_parse(text.data(), text.data() + text.size(), &b);
    if (ok && b.refusal == Builder::Refusal::none) return root;
    std::string detail = std::move(b.detail);
    if (b.refusal == Builder::Refusal::depth)
        detail = "has nesting deeper than " + std::to_string(max_depth) + " levels (at byte " +
                 std::to_string(offset_of_depth(text, max_depth)) + ")";
    else if (b.refusal == Builder::Refusal::none)
        detail = "is not valid JSON";  // not reached: nlohmann reports every failure through parse_error
    return Error::make("invalid_json", std::string(what) + " " + detail);
}

int json_depth(const json& v) {
    int deepest = 0;
    std::vector<std::pair<const json*, int>> todo{{&v, 0}};
    while (!todo.empty()) {
        auto [j, d] = todo.back();
        todo.pop_back();
        if (!j->is_structured()) continue;
        if (d > deepest) deepest = d;
        for (const auto& child : *j)
            if (child.is_structured()) todo.emplace_back(&child, d + 1);
    }
    return deepest;
}

namespace {

std::string pointer_token(const std::string& key) {
    std::string out;
    for (char c : key) {
        if (c == '~')
            out += "~0";
        else if (c == '/')
            out += "~1";
        else
            out += c;
    }
    return out;
}

bool has_nul(const std::string& s) { return s.find('\0') != std::string::npos; }

std::string without_nul(const std::string& s) {
    std::string out;
    out.reserve(s.size() + 2);
    for (char c : s) {
        if (c == '\0')
            out += kReplacement;
        else
            out += c;
    }
    return out;
}

}  // namespace

std::optional<std::string> find_nul(const json& v) {
    // Depth-first in document order, without recursion.
    std::vector<std::pair<const json*, std::string>> todo{{&v, ""}};
    while (!todo.empty()) {
        auto [j, path] = std::move(todo.back());
        todo.pop_back();
        if (j->is_string()) {
            if (has_nul(j->get_ref<const std::string&>())) return path;
        } else if (j->is_object()) {
            for (auto it = j->begin(); it != j->end(); ++it)
                if (has_nul(it.key())) return path + "/" + pointer_token(it.key());
            std::vector<std::pair<const json*, std::string>> children;
            for (auto it = j->begin(); it != j->end(); ++it)
                children.emplace_back(&it.value(), path + "/" + pointer_token(it.key()));
            for (auto c = children.rbegin(); c != children.rend(); ++c) todo.push_back(std::move(*c));
        } else if (j->is_array()) {
            for (std::size_t i = j->size(); i-- > 0;) todo.emplace_back(&(*j)[i], path + "/" + std::to_string(i));
        }
    }
    return std::nullopt;
}

void replace_nul(json& v) {
    std::vector<json*> todo{&v};
    while (!todo.empty()) {
        json* j = todo.back();
        todo.pop_back();
        if (j->is_string()) {
            auto& s = j->get_ref<std::string&>();
            if (has_nul(s)) s = without_nul(s);
        } else if (j->is_object()) {
            bool keys = false;
            for (auto it = j->begin(); it != j->end() && !keys; ++it) keys = has_nul(it.key());
            if (keys) {  // keys cannot change in place: rebuild the object
                json rebuilt = json::object();
                for (auto it = j->begin(); it != j->end(); ++it) rebuilt[without_nul(it.key())] = std::move(it.value());
                *j = std::move(rebuilt);
            }
            for (auto& child : *j) todo.push_back(&child);
        } else if (j->is_array()) {
            for (auto& child : *j) todo.push_back(&child);
        }
    }
}

}  // namespace engram
