// Registration of the distributed comparison function ops (kernels in cc/kernels/dcf_kernels.cc).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfppml {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("TfppmlDcfGen")
    .Input("alpha: uint64")
    .Input("beta: uint64")
    .Input("seed0: uint64")
    .Input("seed1: uint64")
    .Output("cw: uint64")
    .Attr("bits: int = 64")
    .SetShapeFn([](InferenceContext* c) {
      int bits;
      TF_RETURN_IF_ERROR(c->GetAttr("bits", &bits));
      ShapeHandle alpha, pairs;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &alpha));
      for (int i = 1; i < 4; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 2, &pairs));
      c->set_output(0, c->Matrix(c->Dim(alpha, 0), 4 * static_cast<int64_t>(bits) + 4));
      return ::tensorflow::OkStatus();
    })
    .Doc(
        "Correction words of DCF keys for f_e(x) = beta[e] if x < alpha[e] else 0 (unsigned `bits`-bit x; "
        "beta[e] a pair of uint64), given both parties' 128-bit root seeds seed0[e], seed1[e] ([n, 2]; bit 0 "
        "ignored).  Output [n, 4 * bits + 4]; see cc/kernels/dcf.h for the layout.");

REGISTER_OP("TfppmlDcfEval")
    .Input("seed: uint64")
    .Input("cw: uint64")
    .Input("x: uint64")
    .Output("share: uint64")
    .Attr("party: int")
    .Attr("bits: int = 64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, matrix;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &matrix));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &matrix));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &x));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), c->Dim(x, 1), 2}));
      return ::tensorflow::OkStatus();
    })
    .Doc(
        "Party `party`'s shares of f_e(x[e, p]) for DCF keys (its root seeds [n, 2] and the correction words "
        "[n, 4 * bits + 4]) at points x [n, points]: output [n, points, 2].  The two parties' shares add up "
        "to f_e(x[e, p]) modulo 2**64.");

}  // namespace tfppml
