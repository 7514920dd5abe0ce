#!/usr/bin/env bash
# `make bazel-test`: builds tfppml's op library with Bazel against the TensorFlow of .venv and runs the Bazel
# py_test that loads it, fully offline.  Run after `make install` (the Makefile does).
#
# - Installs Debian's bazel-bootstrap (Bazel 4.2.3, the version WORKSPACE is written for) when `bazel` is
#   missing: needs root, asks nothing.  $BAZEL names another Bazel binary.
# - Keeps Bazel's output root outside the source tree, in $TFPPML_BAZEL_ROOT (default
#   ~/.cache/tfppml-bazel), with a disk cache there, so later runs, and fresh clones, reuse the build.
# - Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

BAZEL="${BAZEL:-bazel}"
ROOT="${TFPPML_BAZEL_ROOT:-${HOME:-/root}/.cache/tfppml-bazel}"
PYTHON="${TFPPML_PYTHON:-$PWD/.venv/bin/python}"

if ! command -v "$BAZEL" >/dev/null 2>&1; then
    if [ "$BAZEL" != bazel ] || [ "$(id -u)" -ne 0 ]; then
        echo "bazel_test: $BAZEL not found: install it (apt-get install bazel-bootstrap)" >&2
        exit 1
    fi
    echo "bazel_test: bazel not found; installing Debian's bazel-bootstrap" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q bazel-bootstrap </dev/null
fi

if [ ! -x "$PYTHON" ]; then
    echo "bazel_test: $PYTHON is missing: run 'make install' first (or set TFPPML_PYTHON)" >&2
    exit 1
fi

mkdir -p "$ROOT"
# The server quits after 10 idle minutes, so a finished run leaves nothing behind for long; on CI (a fresh
# clone that nothing reuses) it is shut down as soon as the script ends.
STARTUP=(--output_user_root="$ROOT" --max_idle_secs=600)
if [ -n "${CI:-}" ]; then
    trap '"$BAZEL" "${STARTUP[@]}" shutdown </dev/null >/dev/null 2>&1 || true' EXIT
fi
# .bazelrc adds --spawn_strategy=local.  .venv/bin/python is what the repository rule asks for TensorFlow's
# headers, library and flags, and what runs the py_test (bazel/tf_configure.bzl; TFPPML_PYTHON overrides it).
FLAGS=(--disk_cache="$ROOT/disk-cache")
# The smoke test always runs (a cached pass would not notice a changed .venv).
TEST_FLAGS=(--cache_test_results=no)

start=$(date +%s)
"$BAZEL" "${STARTUP[@]}" build "${FLAGS[@]}" //:_tfppml_ops.so </dev/null
"$BAZEL" "${STARTUP[@]}" test "${FLAGS[@]}" "${TEST_FLAGS[@]}" //:bazel_smoke_test </dev/null
echo "bazel_test: passed in $(($(date +%s) - start)) s; the library is bazel-bin/_tfppml_ops.so"
