#include "engram/http/client.h"
#include "engram/memory/memory.h"

#include <cctype>
#include <cmath>
#include <limits>

namespace engram::memory {
namespace {

std::uint64_t fnv1a(std::string_view s, std::uint64_t seed) {
    std::uint64_t h = 1469598103934665603ULL ^ seed;
    for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ULL;
    }
    return h;
}

// A crude stem: enough for "remember"/"remembered"/"remembering" to share a feature.
std::string stem(std::string w) {
    for (const char* suf : {"ing", "ed", "es", "s", "ly"}) {
        std::string_view sv(suf);
        if (w.size() > sv.size() + 2 && w.compare(w.size() - sv.size(), sv.size(), sv) == 0) {
            w.resize(w.size() - sv.size());
            break;
        }
    }
    return w;
}

void add(std::vector<float>& v, std::string_view feature, float weight) {
    auto h = fnv1a(feature, 0x9e3779b97f4a7c15ULL);
    v[h % kLocalDims] += (h >> 63) ? weight : -weight;
}

class LocalEmbedder : public Embedder {
public:
    Result<std::vector<float>> embed(std::string_view text) override { return local_embedding(text); }
    std::string name() const override { return "local"; }
};

class RemoteEmbedder : public Embedder {
public:
    RemoteEmbedder(std::string base, std::string key, std::string model)
        : base_(std::move(base)), key_(std::move(key)), model_(std::move(model)) {}
    Result<std::vector<float>> embed(std::string_view text) override {
        // Base URL like https://api.openai.com/v1: the client takes the origin, the path the rest.
        auto scheme_end = base_.find("://");
        auto path_start = base_.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3);
        std::string origin = path_start == std::string::npos ? base_ : base_.substr(0, path_start);
        std::string prefix = path_start == std::string::npos ? "" : base_.substr(path_start);
        if (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
        http::Client c(origin, http::ClientOptions{std::chrono::milliseconds(30000)});
        http::Headers h;
        if (!key_.empty()) h.emplace_back("Authorization", "Bearer " + key_);
        auto r = c.post_json(prefix + "/embeddings", {{"model", model_}, {"input", std::string(text)}}, h);
        if (!r) return std::move(r).error();
        if (r->status != 200)
            return Error{"embeddings",
                         "embeddings endpoint answered " + std::to_string(r->status) + ": " + r->body.substr(0, 200),
                         {{"status", r->status}}};
        auto j = r->json();
        if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
            !j["data"][0].contains("embedding") || !j["data"][0]["embedding"].is_array())
            return Error::make("embeddings", "embeddings endpoint returned no data[0].embedding");
        std::vector<float> v;
        for (auto& x : j["data"][0]["embedding"]) {
            // A value no float holds would be undefined behaviour to convert, a string an exception.
            if (!x.is_number() || !(std::fabs(x.get<double>()) <= std::numeric_limits<float>::max()))
                return Error::make("embeddings", "embeddings endpoint returned a value that is not a float: " + x.dump());
            v.push_back(static_cast<float>(x.get<double>()));
        }
        return v;
    }
    std::string name() const override { return "openai-compatible:" + model_; }

private:
    std::string base_, key_, model_;
};

}  // namespace

std::vector<float> local_embedding(std::string_view text) {
    std::vector<float> v(kLocalDims, 0.0f);
    std::string word;
    auto flush = [&] {
        if (word.empty()) return;
        auto s = stem(word);
        add(v, "w:" + s, 1.0f);
        std::string padded = "^" + s + "$";
        for (std::size_t i = 0; i + 3 <= padded.size(); ++i) add(v, "t:" + padded.substr(i, 3), 0.35f);
        word.clear();
    };
    for (unsigned char c : text) {
        if (std::isalnum(c) || c >= 0x80)
            word.push_back(static_cast<char>(std::tolower(c)));
        else
            flush();
    }
    flush();
    double n = 0;
    for (float x : v) n += double(x) * x;
    if (n > 0) {
        float inv = static_cast<float>(1.0 / std::sqrt(n));
        for (auto& x : v) x *= inv;
    }
    return v;
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size() || a.empty()) return 0;
    double dot = 0, na = 0, nb = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        dot += double(a[i]) * b[i];
        na += double(a[i]) * a[i];
        nb += double(b[i]) * b[i];
    }
    return na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0;
}

std::unique_ptr<Embedder> make_embedder(const std::string& base_url, const std::string& api_key, const std::string& model) {
    if (!base_url.empty() && !model.empty()) return std::make_unique<RemoteEmbedder>(base_url, api_key, model);
    return std::make_unique<LocalEmbedder>();
}

}  // namespace engram::memory
