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

# engram_fuzzer(<name> SRCS ... [DEPS ...] [INCLUDES ...] [CORPUS <dir>] [FUZZ_ONLY]): a libFuzzer target. SRCS hold
# one LLVMFuzzerTestOneInput (conventionally <lib>/fuzz/<name>_fuzz.cpp) and whatever sources it needs
# that are not in DEPS; the seed corpus is CORPUS, by default fuzz/corpus/<name> beside the caller.
#  - ENGRAM_FUZZ=ON (the `fuzz` preset, clang): the executable <name>_fuzz, built by the target
#    `fuzzers` and listed in <build>/fuzzers.txt ("<name> <executable> <corpus>") for deploy/fuzz.sh.
#  - otherwise: the unit test <name>_fuzz_corpus, which feeds every file of the corpus to the same
#    entry point, so the normal build compiles every target and replays its seeds and regressions.
#    FUZZ_ONLY: none, for a target whose corpus another test already replays.
function(engram_fuzzer name)
  cmake_parse_arguments(A "FUZZ_ONLY" "CORPUS" "SRCS;DEPS;INCLUDES" ${ARGN})
  if(NOT A_CORPUS)
    set(A_CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${name})
  endif()
  if(ENGRAM_FUZZ)
    add_executable(${name}_fuzz ${A_SRCS})
    target_link_libraries(${name}_fuzz PRIVATE ${A_DEPS} nlohmann_json::nlohmann_json)
    target_include_directories(${name}_fuzz PRIVATE ${A_INCLUDES})
    target_link_options(${name}_fuzz PRIVATE -fsanitize=fuzzer)
    add_dependencies(fuzzers ${name}_fuzz)
    set_property(GLOBAL APPEND PROPERTY ENGRAM_FUZZERS "${name} $<TARGET_FILE:${name}_fuzz> ${A_CORPUS}")
  elseif(NOT A_FUZZ_ONLY)
    engram_test(${name}_fuzz_corpus LABEL unit SRCS ${A_SRCS} ${PROJECT_SOURCE_DIR}/cmake/fuzz_corpus_test.cpp
      DEPS ${A_DEPS})
    target_include_directories(${name}_fuzz_corpus PRIVATE ${A_INCLUDES})
    target_compile_definitions(${name}_fuzz_corpus PRIVATE ENGRAM_FUZZ_NAME="${name}" ENGRAM_FUZZ_CORPUS="${A_CORPUS}")
  endif()
endfunction()

# Links the allocator chosen at the top level (jemalloc) into a service executable.
function(engram_use_allocator target)
  if(ENGRAM_JEMALLOC)
    target_link_libraries(${target} PRIVATE ${ENGRAM_JEMALLOC})
  endif()
endfunction()
