// Registration of the CKKS ops (kernels in cc/he/ckks_kernels.cc).  Context handles and cipher tensors are
// scalar tf.variant tensors (see cc/he/cipher_tensor.h); plain operands are float64.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfppml {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

::tensorflow::Status ScalarOutput(InferenceContext* c) {
  c->set_output(0, c->Scalar());
  return ::tensorflow::OkStatus();
}

::tensorflow::Status ScalarInputsScalarOutput(InferenceContext* c) {
  ShapeHandle unused;
  for (int i = 0; i < c->num_inputs(); ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  return ScalarOutput(c);
}

// A cipher op with one scalar variant input and further inputs of any shape.
::tensorflow::Status FirstScalarOutputScalar(InferenceContext* c) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 0, &unused));
  return ScalarOutput(c);
}

}  // namespace

REGISTER_OP("TfppmlCkksContextCreate")
    .Input("global_scale: float64")
    .Output("context: variant")
    .Attr("poly_modulus_degree: int")
    .Attr("coeff_mod_bit_sizes: list(int)")
    .Attr("galois_steps: list(int) = []")
    .Attr("power_of_two_galois: bool = true")
    .Attr("relin_keys: bool = true")
    .SetIsStateful()
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("Makes CKKS parameters (refusing those below 128-bit security) and a fresh key set.");

REGISTER_OP("TfppmlCkksContextPublic")
    .Input("context: variant")
    .Output("public_context: variant")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("The same key set without the secret key (what a server receives).");

REGISTER_OP("TfppmlCkksContextSerialize")
    .Input("context: variant")
    .Output("data: string")
    .Attr("include_secret_key: bool = false")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("Parameters and key material as bytes; the secret key only with include_secret_key.");

REGISTER_OP("TfppmlCkksContextDeserialize")
    .Input("data: string")
    .Output("context: variant")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("Parses TfppmlCkksContextSerialize's bytes; malformed or insecure data is an InvalidArgument.");

REGISTER_OP("TfppmlCkksContextInfo")
    .Input("context: variant")
    .Output("info: int64")
    .Output("global_scale: float64")
    .Output("coeff_mod_bit_sizes: int32")
    .Output("galois_steps: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 0, &unused));
      c->set_output(0, c->Vector(8));
      c->set_output(1, c->Scalar());
      c->set_output(2, c->Vector(InferenceContext::kUnknownDim));
      c->set_output(3, c->Vector(InferenceContext::kUnknownDim));
      return ::tensorflow::OkStatus();
    })
    .Doc("info = [poly_modulus_degree, slot_count, depth, has_secret_key, has_relin_keys, has_galois_keys, "
         "key_id_lo, key_id_hi].");

REGISTER_OP("TfppmlCkksEncrypt")
    .Input("context: variant")
    .Input("values: float64")
    .Output("cipher: variant")
    .Attr("layout: {'vector', 'batch'} = 'vector'")
    .SetIsStateful()
    .SetShapeFn(FirstScalarOutputScalar)
    .Doc("Encodes and encrypts a float tensor of rank >= 1 in the given slot layout.");

REGISTER_OP("TfppmlCkksDecrypt")
    .Input("context: variant")
    .Input("cipher: variant")
    .Output("values: float64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 0, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &unused));
      c->set_output(0, c->UnknownShape());
      return ::tensorflow::OkStatus();
    })
    .Doc("Decrypts and decodes; needs a context holding the secret key of the cipher's key set.");

REGISTER_OP("TfppmlCkksCipherInfo")
    .Input("cipher: variant")
    .Output("shape: int64")
    .Output("info: int64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 0, &unused));
      c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
      c->set_output(1, c->Vector(6));
      return ::tensorflow::OkStatus();
    })
    .Doc("shape, and info = [layout (0 vector, 1 batch), level, period, ciphertexts, key_id_lo, key_id_hi].");

#define TFPPML_CKKS_BINARY(name, doc)        \
  REGISTER_OP(name)                          \
      .Input("a: variant")                   \
      .Input("b: variant")                   \
      .Output("c: variant")                  \
      .SetShapeFn(ScalarInputsScalarOutput)  \
      .Doc(doc);

TFPPML_CKKS_BINARY("TfppmlCkksAdd", "a + b, levels matched by modulus switching.")
TFPPML_CKKS_BINARY("TfppmlCkksSub", "a - b, levels matched by modulus switching.")
TFPPML_CKKS_BINARY("TfppmlCkksMul", "a * b with relinearization and rescale (one level).")
#undef TFPPML_CKKS_BINARY

#define TFPPML_CKKS_PLAIN(name, doc)          \
  REGISTER_OP(name)                           \
      .Input("a: variant")                    \
      .Input("b: float64")                    \
      .Output("c: variant")                   \
      .SetShapeFn(FirstScalarOutputScalar)    \
      .Doc(doc);

TFPPML_CKKS_PLAIN("TfppmlCkksAddPlain", "a + b for a plain b of a's shape.")
TFPPML_CKKS_PLAIN("TfppmlCkksSubPlain", "a - b for a plain b of a's shape.")
TFPPML_CKKS_PLAIN("TfppmlCkksMulPlain", "a * b for a plain b of a's shape, rescaled (one level).")
TFPPML_CKKS_PLAIN("TfppmlCkksPolyval",
                  "sum_k b[k] a^k for plain coefficients b (lowest degree first); depth ceil(log2 deg) + 1.")
TFPPML_CKKS_PLAIN("TfppmlCkksMatMulPlain",
                  "a @ b for a plain matrix b [n, m]: vector layout by the baby-step/giant-step diagonal "
                  "method, batch layout by scalar multiply-adds; one level.")
#undef TFPPML_CKKS_PLAIN

REGISTER_OP("TfppmlCkksNeg")
    .Input("a: variant")
    .Output("c: variant")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("-a.");

REGISTER_OP("TfppmlCkksSquare")
    .Input("a: variant")
    .Output("c: variant")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("a * a with relinearization and rescale (one level).");

REGISTER_OP("TfppmlCkksSum")
    .Input("a: variant")
    .Output("c: variant")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("Sum over the last axis, kept as a dimension of size 1 (rotations in the vector layout).");

REGISTER_OP("TfppmlCkksRotate")
    .Input("a: variant")
    .Input("steps: int64")
    .Output("c: variant")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("Cyclic left rotation of each row by `steps` (vector layout, row length a power of two).");

REGISTER_OP("TfppmlCkksSerialize")
    .Input("cipher: variant")
    .Output("data: string")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("The cipher tensor as bytes (shape, layout, key-set id and SEAL ciphertexts).");

REGISTER_OP("TfppmlCkksDeserialize")
    .Input("context: variant")
    .Input("data: string")
    .Output("cipher: variant")
    .SetShapeFn(ScalarInputsScalarOutput)
    .Doc("Parses TfppmlCkksSerialize's bytes under `context`; malformed data is an InvalidArgument.");

}  // namespace tfppml
