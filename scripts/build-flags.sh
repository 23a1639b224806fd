# CMake flags of the builds that more than one script configures (sourced by scripts/setup
# and scripts/fuzz, so that both make the same build-asan/).
# build-asan/: clang with ASan+UBSan for the unit tests and the ASan VMM of the e2e tests,
# and libFuzzer's coverage for the fuzz targets (fuzz/), in one compile of the code.
ASAN_FLAGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-16 -DENLIGHTEN_SANITIZE=ON
  -DENLIGHTEN_FUZZ=ON -DENLIGHTEN_BENCH=OFF)
