"""The one source list for the custom-op libraries.

Read by Bazel (`load("//cc:sources.bzl", ...)` in BUILD) and by setup.py (parsed with `ast`, so keep it to plain
assignments of string lists).  Adding a kernel family means adding its two files here, once.
"""

# Kernels that know nothing of SEAL: ring arithmetic, fixed point, matmul/conv2d, PRG.
TFPPML_OPS_SRCS = [
    "cc/ops/ring_ops.cc",
    "cc/kernels/ring_kernels.cc",
    "cc/ops/fixed_point_ops.cc",
    "cc/kernels/fixed_point_kernels.cc",
    "cc/ops/prg_ops.cc",
    "cc/kernels/prg_kernels.cc",
]

TFPPML_OPS_HDRS = [
    "cc/kernels/parallel.h",
]
