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
    "cc/ops/ring_matmul_ops.cc",
    "cc/kernels/ring_matmul_kernels.cc",
    "cc/kernels/ring_gemm.cc",
    "cc/kernels/ring_gemm_amx.cc",
    "cc/kernels/chacha20.cc",
    "cc/kernels/cpu_isa.cc",
    "cc/ops/gaussian_noise_ops.cc",
    "cc/kernels/gaussian_noise_kernels.cc",
    "cc/ops/bit_planes_ops.cc",
    "cc/kernels/bit_planes_kernels.cc",
    "cc/ops/dcf_ops.cc",
    "cc/kernels/dcf_kernels.cc",
    "cc/kernels/dcf.cc",
]

TFPPML_OPS_HDRS = [
    "cc/kernels/parallel.h",
    "cc/kernels/ring_gemm.h",
    "cc/kernels/chacha20.h",
    "cc/kernels/cpu_isa.h",
    "cc/kernels/dcf.h",
]

# The CKKS kernels (tfppml.he._tfppml_he), linked against the static SEAL 4.1.2 that scripts/build_seal.sh
# builds into ~/.cache/tfppml/seal-4.1.2 (or $TFPPML_SEAL_DIR).
TFPPML_HE_SRCS = [
    "cc/he/cipher_tensor.cc",
    "cc/he/ckks_ops.cc",
    "cc/he/ckks_kernels.cc",
]

TFPPML_HE_HDRS = [
    "cc/he/cipher_tensor.h",
]
