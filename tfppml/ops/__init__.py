"""Thin Python wrappers over tfppml's custom TensorFlow kernels.

Every function takes tf.Tensors or NumPy arrays, checks dtypes and shapes (raising ValueError/TypeError that name
the argument) and returns tf.Tensors.  Ring values are `tf.uint64` with wrap-around arithmetic modulo 2**64;
a negative fixed-point number is stored in two's complement.
"""

from tfppml.ops.bit_planes import bit_planes, bit_planes_numpy, plane_bits_numpy
from tfppml.ops.dcf import dcf_eval, dcf_eval_numpy, dcf_gen, dcf_gen_numpy, dcf_key_words, dcf_uses_aes_ni
from tfppml.ops.fixed_point import fixed_point_decode, fixed_point_encode
from tfppml.ops.gaussian_noise import add_gaussian_noise, gaussian_noise
from tfppml.ops.prg import prg_uniform, prg_uniform_numpy
from tfppml.ops.ring import ring_add, ring_mul, ring_neg, ring_reduce_sum, ring_shift_right, ring_sub
from tfppml.ops.ring_matmul import ring_conv2d, ring_matmul, ring_matmul_numpy

__all__ = [
    "add_gaussian_noise",
    "bit_planes",
    "bit_planes_numpy",
    "dcf_eval",
    "dcf_eval_numpy",
    "dcf_gen",
    "dcf_gen_numpy",
    "dcf_key_words",
    "dcf_uses_aes_ni",
    "fixed_point_decode",
    "fixed_point_encode",
    "gaussian_noise",
    "plane_bits_numpy",
    "prg_uniform",
    "prg_uniform_numpy",
    "ring_add",
    "ring_conv2d",
    "ring_matmul",
    "ring_matmul_numpy",
    "ring_mul",
    "ring_neg",
    "ring_reduce_sum",
    "ring_shift_right",
    "ring_sub",
]
