// Registration of the Gaussian noise ops: N(0, stddev^2) samples from a ChaCha20 keystream (Ziggurat method),
// keyed per execution from the operating system's CSPRNG unless an explicit seed is given.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfppml {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

::tensorflow::Status CheckNoiseParams(InferenceContext* c, int stddev, int seed, int nonce) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(stddev), 0, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(seed), 1, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(nonce), 0, &unused));
  return ::tensorflow::OkStatus();
}

}  // namespace

// Stateful: with an empty seed every execution draws a fresh key, so TensorFlow must neither constant-fold nor
// deduplicate these ops (a folded noise tensor would be the same noise at every step).
REGISTER_OP("TfppmlGaussianNoise")
    .Input("shape: int64")
    .Input("stddev: double")
    .Input("seed: uint64")
    .Input("nonce: int64")
    .Output("output: T")
    .Attr("T: {float, double}")
    .Attr("force_scalar: bool = false")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &unused));
      TF_RETURN_IF_ERROR(CheckNoiseParams(c, 1, 2, 3));
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(0, &out));
      c->set_output(0, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(
        "Samples of N(0, stddev^2) of the given shape.  `seed` is empty (a fresh 256-bit key from the OS "
        "CSPRNG at every execution: the default for differential privacy) or 4 uint64 words (a 256-bit "
        "ChaCha20 key, for reproducible tests); `nonce` selects an independent stream under the same key.  "
        "Uniforms come from the ChaCha20 keystream, normals from the Ziggurat method in double precision.  "
        "`force_scalar` runs the portable code instead of AVX2 (same numbers; for tests).");

REGISTER_OP("TfppmlAddGaussianNoise")
    .Input("x: T")
    .Input("stddev: double")
    .Input("seed: uint64")
    .Input("nonce: int64")
    .Output("output: T")
    .Attr("T: {float, double}")
    .Attr("force_scalar: bool = false")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(CheckNoiseParams(c, 1, 2, 3));
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    })
    .Doc(
        "x + N(0, stddev^2) elementwise, reusing x's buffer when it can: the same samples TfppmlGaussianNoise "
        "draws for the same seed and nonce, added in double precision and rounded once.");

}  // namespace tfppml
