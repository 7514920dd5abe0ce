// Registration of the ring matrix product and 2-D convolution over Z_2^64 (uint64, wrap-around).
// Kernels: cc/kernels/ring_matmul_kernels.cc; GEMM core: cc/kernels/ring_gemm.{h,cc}.
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/padding.h"

namespace tfppml {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// [..., m, k] x [..., k, n] -> [broadcast(...), m, n], as tf.matmul.
Status RingMatMulShape(InferenceContext* c) {
  ShapeHandle a;
  ShapeHandle b;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 2, &a));
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 2, &b));
  if (!c->RankKnown(a) || !c->RankKnown(b)) {
    c->set_output(0, c->UnknownShape());
    return ::tensorflow::OkStatus();
  }
  DimensionHandle inner;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(a, -1), c->Dim(b, -2), &inner));
  ShapeHandle a_batch;
  ShapeHandle b_batch;
  ShapeHandle batch;
  TF_RETURN_IF_ERROR(c->Subshape(a, 0, -2, &a_batch));
  TF_RETURN_IF_ERROR(c->Subshape(b, 0, -2, &b_batch));
  TF_RETURN_IF_ERROR(
      ::tensorflow::shape_inference::BroadcastBinaryOpOutputShapeFnHelper(c, a_batch, b_batch, true, &batch));
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->Concatenate(batch, c->Matrix(c->Dim(a, -2), c->Dim(b, -1)), &out));
  c->set_output(0, out);
  return ::tensorflow::OkStatus();
}

// NHWC input, HWIO filters -> NHWC output, with tf.nn.conv2d's output size for SAME / VALID.
Status RingConv2DShape(InferenceContext* c) {
  ShapeHandle input;
  ShapeHandle filters;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &filters));
  std::vector<int32_t> strides;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1) {
    return ::tensorflow::errors::InvalidArgument(
        "strides must be two positive ints [stride_h, stride_w], got [", absl::StrJoin(strides, ", "), "]");
  }
  std::string padding_name;
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding_name));
  ::tensorflow::Padding padding;
  TF_RETURN_IF_ERROR(::tensorflow::GetPaddingFromString(padding_name, &padding));
  DimensionHandle in_c;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(input, 3), c->Dim(filters, 2), &in_c));
  DimensionHandle out_h;
  DimensionHandle out_w;
  TF_RETURN_IF_ERROR(::tensorflow::shape_inference::GetWindowedOutputSizeFromDims(
      c, c->Dim(input, 1), c->Dim(filters, 0), strides[0], padding, &out_h));
  TF_RETURN_IF_ERROR(::tensorflow::shape_inference::GetWindowedOutputSizeFromDims(
      c, c->Dim(input, 2), c->Dim(filters, 1), strides[1], padding, &out_w));
  c->set_output(0, c->MakeShape({c->Dim(input, 0), out_h, out_w, c->Dim(filters, 3)}));
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("TfppmlRingMatMul")
    .Input("a: uint64")
    .Input("b: uint64")
    .Output("c: uint64")
    .Attr("force_scalar: bool = false")
    .SetShapeFn(RingMatMulShape)
    .Doc(R"doc(
Matrix product modulo 2^64: c[..., i, j] = sum_p a[..., i, p] * b[..., p, j] mod 2^64.

a: [..., m, k]; b: [..., k, n]; batch dimensions broadcast as in tf.matmul.
force_scalar: use the portable micro-kernel even when the CPU has AVX2 (for tests).
)doc");

REGISTER_OP("TfppmlRingConv2D")
    .Input("input: uint64")
    .Input("filters: uint64")
    .Output("output: uint64")
    .Attr("strides: list(int)")
    .Attr("padding: {'SAME', 'VALID'}")
    .Attr("force_scalar: bool = false")
    .SetShapeFn(RingConv2DShape)
    .Doc(R"doc(
2-D convolution modulo 2^64 with tf.nn.conv2d's conventions (NHWC input, HWIO filters, no dilation).

input: [batch, in_h, in_w, in_c]; filters: [filter_h, filter_w, in_c, out_c].
strides: [stride_h, stride_w].
padding: SAME or VALID, with TensorFlow's output sizes and padding placement (extra padding at the end).
force_scalar: use the portable micro-kernel even when the CPU has AVX2 (for tests).
)doc");

}  // namespace tfppml
