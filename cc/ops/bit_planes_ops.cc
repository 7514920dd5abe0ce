// Registration of the bit-slicing op (kernel in cc/kernels/bit_planes_kernels.cc).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfppml {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("TfppmlBitPlanes")
    .Input("x: uint64")
    .Output("planes: uint64")
    .SetShapeFn([](InferenceContext* c) {
      DimensionHandle n = c->NumElements(c->input(0));
      DimensionHandle words = c->UnknownDim();
      if (c->ValueKnown(n)) words = c->MakeDim((c->Value(n) + 63) / 64);
      c->set_output(0, c->Matrix(64, words));
      return ::tensorflow::OkStatus();
    })
    .Doc(
        "Bit-slices the elements of `x` (flattened, row-major) into 64 planes: planes[j, w] holds bit j of "
        "elements 64w .. 64w + 63, element 64w + b in bit b (bit 0 = least significant).  The last word's "
        "bits past the end of `x` are 0.  Output shape [64, ceil(size / 64)].");

}  // namespace tfppml
