# engram_library(<name> SRCS ... DEPS ...) -> target engram_<name>, alias engram::<name>.
# Headers live in <folder>/include/engram/<name>/ and are included as <engram/<name>/x.h>.
function(engram_library name)
  cmake_parse_arguments(A "" "" "SRCS;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(engram_${name} STATIC ${A_SRCS})
  add_library(engram::${name} ALIAS engram_${name})
  target_include_directories(engram_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
  target_link_libraries(engram_${name} PUBLIC ${A_DEPS} PRIVATE ${A_PRIVATE_DEPS})
  engram_use_pch(engram_${name})
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tests/CMakeLists.txt)
    add_subdirectory(tests)
  endif()
endfunction()

# One precompiled header (standard library, nlohmann/json, spdlog, fmt) built once and reused by
# every target: compiling json.hpp per translation unit is what makes a 2-core build slow.
function(engram_use_pch target)
  # Reusing a PCH needs identical compile definitions, hence the same three usage requirements.
  target_link_libraries(${target} PRIVATE nlohmann_json::nlohmann_json spdlog::spdlog fmt::fmt)
  target_precompile_headers(${target} REUSE_FROM engram_pch)
endfunction()

# engram_test(<name> LABEL unit|integration|e2e SRCS ... DEPS ...): one Catch2 executable whose
# cases are registered with ctest one by one, under the given label. A case name must not contain
# ';' (CMake splits it into two entries that match nothing and "pass").
function(engram_test name)
  cmake_parse_arguments(A "" "LABEL" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${A_SRCS})
  target_link_libraries(${name} PRIVATE engram_test_main ${A_DEPS})
  engram_use_pch(${name})
  catch_discover_tests(${name} PROPERTIES LABELS ${A_LABEL} TIMEOUT 600
    DISCOVERY_MODE PRE_TEST)
endfunction()
