#include <string>

#include "engram/testing/util.h"

#ifndef ENGRAM_BUILD_DIR
#error "ENGRAM_BUILD_DIR must be defined by libs/testing/CMakeLists.txt"
#endif

namespace engram::testing {

std::string build_dir() { return ENGRAM_BUILD_DIR; }

}  // namespace engram::testing
