#!/bin/sh
# test.sh: install what is missing, build, and run every test twice: a
# normal build and an ASan+UBSan build.  Run as root (the integration
# tests start a private sshd).
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh build
(cd build && ctest --output-on-failure)
./scripts/build.sh build-asan -DREPLICAD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	ctest --output-on-failure)
