// Registration of fixed-point encoding between floats and the ring Z_2^64.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"

namespace tfppml {

REGISTER_OP("TfppmlFixedPointEncode")
    .Input("x: T")
    .Attr("T: {float, double}")
    .Attr("frac_bits: int >= 0")
    .Output("y: uint64")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc(
        "y = round(x * 2^frac_bits) as two's-complement int64 in uint64, rounding half to even.  NaN, Inf and "
        "values whose encoding does not fit in int64 are errors, never wrapped.");

REGISTER_OP("TfppmlFixedPointDecode")
    .Input("x: uint64")
    .Attr("frac_bits: int >= 0")
    .Attr("out_type: {float, double} = DT_DOUBLE")
    .Output("y: out_type")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc("y = int64(x) / 2^frac_bits.");

}  // namespace tfppml
