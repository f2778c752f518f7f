# Compile options for project targets (not for third-party code).
add_library(duet_options INTERFACE)
target_compile_options(duet_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align
  -Wunused -Woverloaded-virtual -Wnull-dereference -Wimplicit-fallthrough
  # Designated initializers deliberately leave defaulted members out.
  -Wno-missing-field-initializers)
if(DUET_WERROR)
  target_compile_options(duet_options INTERFACE -Werror)
endif()
target_include_directories(duet_options INTERFACE ${CMAKE_SOURCE_DIR})

if(DUET_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

if(DUET_FUZZ)
  # Coverage instrumentation for everything; only fuzz targets link libFuzzer's main.
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

# duet_add_test(NAME src... LIBS lib...) builds a GoogleTest binary and registers its tests.
include(GoogleTest)
function(duet_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE duet_options ${ARG_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE
    DUET_SHARED_DIR="${DUET_SHARED_DIR}"
    DUET_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES ENVIRONMENT "DUET_TEST=1")
endfunction()
