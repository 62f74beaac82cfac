// The unit test engram_fuzzer() builds outside the fuzz preset: every file of the target's committed
// corpus (seeds and the inputs of past findings) goes through its LLVMFuzzerTestOneInput, as libFuzzer
// would feed it. A target signals a broken property by aborting, which fails this test.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

TEST_CASE("fuzz target " ENGRAM_FUZZ_NAME " passes over its corpus", "[unit][fuzz]") {
    namespace fs = std::filesystem;
    const fs::path dir = ENGRAM_FUZZ_CORPUS;
    REQUIRE(fs::is_directory(dir));
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    REQUIRE(files.size() >= 3);  // a corpus worth the name
    for (const auto& f : files) {
        INFO(f.string());
        std::ifstream in(f, std::ios::binary);
        std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        CHECK(LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()) == 0);
    }
    // And the empty input, which libFuzzer always tries first.
    CHECK(LLVMFuzzerTestOneInput(nullptr, 0) == 0);
}
