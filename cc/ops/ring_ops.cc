// Registration of the ring-arithmetic ops: elementwise add/sub/neg/mul with broadcasting, reduce_sum and
// arithmetic right shift, all on uint64 modulo 2^64.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfppml {

using ::tensorflow::shape_inference::InferenceContext;

#define TFPPML_REGISTER_RING_BINARY(name, doc)                  \
  REGISTER_OP(name)                                             \
      .Input("x: uint64")                                       \
      .Input("y: uint64")                                       \
      .Output("z: uint64")                                      \
      .SetShapeFn(::tensorflow::shape_inference::BroadcastBinaryOpShapeFn) \
      .Doc(doc)

TFPPML_REGISTER_RING_BINARY("TfppmlRingAdd", "z = x + y mod 2^64, with NumPy broadcasting.");
TFPPML_REGISTER_RING_BINARY("TfppmlRingSub", "z = x - y mod 2^64, with NumPy broadcasting.");
TFPPML_REGISTER_RING_BINARY("TfppmlRingMul", "z = x * y mod 2^64, with NumPy broadcasting.");

#undef TFPPML_REGISTER_RING_BINARY

REGISTER_OP("TfppmlRingNeg")
    .Input("x: uint64")
    .Output("y: uint64")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc("y = -x mod 2^64.");

REGISTER_OP("TfppmlRingReduceSum")
    .Input("x: uint64")
    .Input("axis: int32")
    .Attr("keep_dims: bool = false")
    .Output("y: uint64")
    .SetShapeFn(::tensorflow::shape_inference::ReductionShape)
    .Doc("Sum of x over the given axes, modulo 2^64 (axis as in tf.reduce_sum, negative axes allowed).");

REGISTER_OP("TfppmlRingShiftRight")
    .Input("x: uint64")
    .Attr("bits: int >= 0")
    .Output("y: uint64")
    .SetShapeFn([](InferenceContext* c) {
      int bits;
      TF_RETURN_IF_ERROR(c->GetAttr("bits", &bits));
      if (bits > 63) {
        return ::tensorflow::errors::InvalidArgument("bits must be in [0, 63], got ", bits);
      }
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    })
    .Doc("Arithmetic right shift: x read as a two's-complement int64, shifted right by `bits`, sign kept.");

}  // namespace tfppml
