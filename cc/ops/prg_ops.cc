// Registration of the cryptographic pseudo-random generator (ChaCha20 keystream as uint64).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfppml {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("TfppmlPrgUniform")
    .Input("seed: uint64")
    .Input("shape: int64")
    .Input("offset: int64")
    .Output("output: uint64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(1, &out));
      c->set_output(0, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(
        "Uniform uint64 values from the ChaCha20 keystream keyed by `seed` (2 words = 128-bit key, 4 words = "
        "256-bit key), nonce 0 and a 64-bit block counter.  Element i of the output is keystream word "
        "offset + i (8 little-endian bytes), so any (seed, offset) always gives the same values and disjoint "
        "offset ranges give independent values.");

}  // namespace tfppml
