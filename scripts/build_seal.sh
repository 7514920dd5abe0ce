#!/usr/bin/env bash
# Builds Microsoft SEAL 4.1.2 as a static, position-independent library for tfppml's HE kernels.
#
#   bash scripts/build_seal.sh            # a fast no-op when the cache already holds the library
#
# SEAL's source comes from the pyfhel 3.5.0 sdist on the package registry (Pyfhel/backend/SEAL); nothing
# third-party is committed to this repository.  The sdist is fetched with pip from a throwaway venv (pyfhel's
# metadata step needs toml, wheel, numpy, cython and setuptools<61 there), then SEAL is configured with every
# option that would download something switched off, built, and installed into the cache:
#
#   $TFPPML_SEAL_DIR (default ~/.cache/tfppml/seal-4.1.2)/{include/SEAL-4.1, lib/libseal-4.1.a}
#
# setup.py reads the same variable.  The install is staged and moved into place at the end, so an
# interrupted build never leaves a half-filled cache behind.
set -euo pipefail

SEAL_VERSION=4.1.2
PYFHEL_VERSION=3.5.0
SEAL_DIR="${TFPPML_SEAL_DIR:-$HOME/.cache/tfppml/seal-$SEAL_VERSION}"
PYTHON="${PYTHON:-python3.11}"
JOBS="${TFPPML_BUILD_JOBS:-$(nproc)}"

if [[ -f "$SEAL_DIR/lib/libseal-4.1.a" && -f "$SEAL_DIR/include/SEAL-4.1/seal/seal.h" ]]; then
  exit 0
fi

echo "tfppml: building SEAL $SEAL_VERSION into $SEAL_DIR (about a minute on 2 cores)" >&2
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tfppml-seal.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

fail() {
  echo "tfppml: the SEAL build failed: $*" >&2
  echo "tfppml: the HE kernels (tfppml.he) need it; the rest of tfppml works without them." >&2
  exit 1
}

# 1. The pyfhel sdist, fetched by pip (the only network access of this script).
"$PYTHON" -m venv "$WORK/venv" || fail "could not create a venv with $PYTHON"
"$WORK/venv/bin/python" -m pip install --disable-pip-version-check -q toml wheel numpy cython "setuptools<61" \
  || fail "could not install pyfhel's metadata requirements into the throwaway venv"
"$WORK/venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
  --no-build-isolation -d "$WORK/sdist" "pyfhel==$PYFHEL_VERSION" \
  || fail "pip could not download the pyfhel==$PYFHEL_VERSION sdist"
SDIST="$(ls "$WORK"/sdist/*.tar.gz | head -n 1)"
tar -xzf "$SDIST" -C "$WORK" || fail "could not unpack $SDIST"
SRC="$(ls -d "$WORK"/*/Pyfhel/backend/SEAL | head -n 1)"
[[ -f "$SRC/CMakeLists.txt" ]] || fail "the pyfhel sdist has no Pyfhel/backend/SEAL/CMakeLists.txt"
grep -q "VERSION $SEAL_VERSION" "$SRC/CMakeLists.txt" || fail "the SEAL inside pyfhel $PYFHEL_VERSION is not $SEAL_VERSION"

# 2. Configure with nothing that downloads, build, install into a staging directory.
STAGE="$SEAL_DIR.staging.$$"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$STAGE" \
  -DSEAL_BUILD_DEPS=OFF -DSEAL_USE_MSGSL=OFF -DSEAL_USE_ZLIB=OFF -DSEAL_USE_ZSTD=OFF -DSEAL_USE_INTEL_HEXL=OFF \
  -DSEAL_BUILD_TESTS=OFF -DSEAL_BUILD_EXAMPLES=OFF -DSEAL_BUILD_BENCH=OFF -DSEAL_BUILD_SEAL_C=OFF \
  -DBUILD_SHARED_LIBS=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
  -DCMAKE_CXX_FLAGS="-D_GLIBCXX_USE_CXX11_ABI=1" >"$WORK/cmake.log" 2>&1 \
  || { tail -n 30 "$WORK/cmake.log" >&2; fail "cmake configure failed"; }
cmake --build "$WORK/build" -j "$JOBS" >"$WORK/build.log" 2>&1 \
  || { tail -n 30 "$WORK/build.log" >&2; fail "compilation failed"; }
rm -rf "$STAGE"
cmake --install "$WORK/build" >"$WORK/install.log" 2>&1 || { rm -rf "$STAGE"; fail "cmake --install failed"; }
[[ -f "$STAGE/lib/libseal-4.1.a" ]] || { rm -rf "$STAGE"; fail "no libseal-4.1.a was produced"; }

mkdir -p "$(dirname "$SEAL_DIR")"
rm -rf "$SEAL_DIR"
mv "$STAGE" "$SEAL_DIR"
echo "tfppml: SEAL $SEAL_VERSION installed in $SEAL_DIR" >&2
