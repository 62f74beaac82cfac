#include <string>

#include "engram/testing/util.h"

#if !defined(ENGRAM_BUILD_DIR) || !defined(ENGRAM_SOURCE_DIR)
#error "ENGRAM_BUILD_DIR and ENGRAM_SOURCE_DIR must be defined by libs/testing/CMakeLists.txt"
#endif

namespace engram::testing {

std::string build_dir() { return ENGRAM_BUILD_DIR; }
std::string source_dir() { return ENGRAM_SOURCE_DIR; }

}  // namespace engram::testing
