#!/usr/bin/env bash
# The Debian package end to end: builds socketserver-dev with `cpack -G DEB`, checks its
# layout, installs it with dpkg -i, builds and runs tests/consumer with find_package and with
# pkg-config against the installed copy, and removes the package.
# Usage: package_deb.sh SOURCE_DIR WORK_DIR CXX [native|cross]
# Needs root, dpkg, cpack and pkg-config; skips (exit 77) where they are missing, or where
# socketserver is installed in /usr already (it is not ours to replace).
set -euo pipefail
source_dir=$1 work=$2 cxx=$3 toolchain=${4:-native}
skip() { echo "package_deb skipped: $*"; exit 77; }
[ "$toolchain" = native ] || skip "a cross toolchain: its compiler does not search /usr/include"
[ "$(id -u)" = 0 ] || skip "needs root to run dpkg -i (CI runs it as root)"
for tool in dpkg dpkg-deb cpack pkg-config; do
  command -v "$tool" >/dev/null || skip "no $tool here"
done
if dpkg -s socketserver-dev >/dev/null 2>&1 || [ -e /usr/include/socketserver.hpp ]; then
  skip "socketserver is installed in /usr already"
fi

rm -rf "$work" && mkdir -p "$work"
cmake -S "$source_dir" -B "$work/build" -DCMAKE_INSTALL_PREFIX=/usr \
  -DSOCKETSERVER_BUILD_TESTS=OFF -DSOCKETSERVER_BUILD_EXAMPLES=OFF >/dev/null
(cd "$work/build" && cpack -G DEB >/dev/null)
deb=$(ls "$work"/build/socketserver-dev_*_all.deb)
echo "built $(basename "$deb")"

# Laid out as Debian's header-only -dev packages.
dpkg-deb --field "$deb" Architecture | grep -qx all || { echo "not Architecture: all"; exit 1; }
contents=$(dpkg-deb --contents "$deb" | awk '{print $6}')
for path in ./usr/include/socketserver.hpp ./usr/include/socketserver/base_server.hpp \
            ./usr/share/cmake/socketserver/socketserverConfig.cmake \
            ./usr/share/cmake/socketserver/socketserverConfigVersion.cmake \
            ./usr/share/pkgconfig/socketserver.pc ./usr/share/doc/socketserver-dev/copyright; do
  grep -qxF "$path" <<<"$contents" || { echo "the package lacks $path"; exit 1; }
done
if grep -v -e '^\./usr/include/' -e '^\./usr/share/' -e '/$' <<<"$contents"; then
  echo "the package installs outside /usr/include and /usr/share"; exit 1
fi

trap 'dpkg -r socketserver-dev >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb" >/dev/null
echo "installed: $(dpkg-query -W -f='${Package} ${Version} ${Architecture}' socketserver-dev)"

# find_package, from the default search path (/usr/share/cmake/socketserver).
cmake -S "$source_dir/tests/consumer" -B "$work/consumer-cmake" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DSOCKETSERVER_SOURCE_DIR= >/dev/null
grep -q '^socketserver_DIR:PATH=/usr/share/cmake/socketserver$' "$work/consumer-cmake/CMakeCache.txt" ||
  { grep socketserver_DIR "$work/consumer-cmake/CMakeCache.txt"; echo "find_package did not use /usr"; exit 1; }
cmake --build "$work/consumer-cmake" >/dev/null
echo "find_package: $("$work/consumer-cmake/consumer")"

# pkg-config, from /usr/share/pkgconfig.
flags=$(pkg-config --cflags --libs socketserver)
# shellcheck disable=SC2086  # the flags are words
"$cxx" -std=c++17 "$source_dir/tests/consumer/main.cpp" $flags -o "$work/consumer-pkgconfig"
echo "pkg-config ($flags): $("$work/consumer-pkgconfig")"

dpkg -r socketserver-dev >/dev/null
trap - EXIT
[ ! -e /usr/include/socketserver.hpp ] || { echo "dpkg -r left the headers"; exit 1; }
echo "removed"
