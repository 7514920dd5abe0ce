// CPU kernels of the CKKS ops (registered in cc/he/ckks_ops.cc).
//
// Every SEAL call runs inside a try/catch: SEAL reports misuse with exceptions, which become InvalidArgument
// (or FailedPrecondition for missing keys and exhausted depth) instead of ending the process.  Work over the
// ciphertexts of a tensor runs on TF's intra-op pool (one ciphertext operation is 0.1-10 ms, so each is its
// own shard).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cc/he/cipher_tensor.h"
#include "cc/kernels/parallel.h"
#include "seal/util/uintarithsmallmod.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/variant.h"
#include "tensorflow/core/framework/variant_encode_decode.h"

namespace tfppml {
namespace he {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::Variant;
using ::tensorflow::errors::FailedPrecondition;
using ::tensorflow::errors::InvalidArgument;

using CipherPtr = std::shared_ptr<const CipherData>;
using ContextPtr = std::shared_ptr<const Context>;

constexpr int64_t kCiphertextCost = 50'000'000;  // cycles per ciphertext operation: one shard each

// ---------------------------------------------------------------------------------------------------------
// Inputs and outputs.

Status GetContext(OpKernelContext* ctx, int index, ContextPtr* out) {
  const Tensor& t = ctx->input(index);
  if (t.dtype() != ::tensorflow::DT_VARIANT || t.dims() != 0) {
    return InvalidArgument("input ", index, " must be a scalar tfppml.he context handle, got a ",
                           ::tensorflow::DataTypeString(t.dtype()), " tensor of shape ", t.shape().DebugString());
  }
  const Variant& v = t.scalar<Variant>()();
  const auto* c = v.get<ContextVariant>();
  if (c == nullptr || !c->context) {
    return InvalidArgument("input ", index, " must be a tfppml.he context handle, got a variant holding ",
                           v.TypeName());
  }
  *out = c->context;
  return ::tensorflow::OkStatus();
}

Status GetCipher(OpKernelContext* ctx, int index, CipherPtr* out) {
  const Tensor& t = ctx->input(index);
  if (t.dtype() != ::tensorflow::DT_VARIANT || t.dims() != 0) {
    return InvalidArgument("input ", index, " must be a scalar tfppml.he cipher tensor, got a ",
                           ::tensorflow::DataTypeString(t.dtype()), " tensor of shape ", t.shape().DebugString());
  }
  const Variant& v = t.scalar<Variant>()();
  const auto* c = v.get<CipherTensor>();
  if (c == nullptr || !c->data) {
    return InvalidArgument("input ", index, " must be a tfppml.he cipher tensor, got a variant holding ",
                           v.TypeName());
  }
  *out = c->data;
  return ::tensorflow::OkStatus();
}

void SetCipherOutput(OpKernelContext* ctx, CipherPtr data) {
  Tensor* out = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
  out->scalar<Variant>()() = CipherTensor(std::move(data));
}

void SetContextOutput(OpKernelContext* ctx, ContextPtr context) {
  Tensor* out = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
  out->scalar<Variant>()() = ContextVariant(std::move(context));
}

Status SameKeySet(const Context& a, const Context& b, const char* what) {
  if (a.key_id() != b.key_id()) {
    return InvalidArgument(what, ": the operands belong to two different CKKS contexts (key sets); "
                           "ciphertexts of two contexts cannot be combined, and a context decrypts only "
                           "its own ciphertexts");
  }
  return ::tensorflow::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// Running SEAL code safely, in parallel.

class FirstError {
 public:
  void Set(const Status& s) {
    if (s.ok()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (status_.ok()) status_ = s;
  }
  Status Get() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }

 private:
  std::mutex mu_;
  Status status_;
};

Status FromException(const std::exception& e, const char* op) {
  return InvalidArgument(op, ": SEAL rejected the operation: ", e.what());
}

// Runs body(i) for i in [0, n) on the intra-op pool; returns the first failure.
template <typename Body>
Status ParallelSeal(OpKernelContext* ctx, int64_t n, const char* op, Body body) {
  FirstError err;
  ParallelFor(ctx, n, kCiphertextCost, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        err.Set(body(i));
      } catch (const std::exception& e) {
        err.Set(FromException(e, op));
      }
    }
  });
  return err.Get();
}

// SEAL refuses to return a transparent ciphertext (all-zero mask, e.g. x - x, or x * 0): it throws after
// computing the result.  Such a result is made a proper ciphertext again by adding a fresh encryption of zero.
template <typename F>
void Guarded(const Context& c, seal::Ciphertext* ct, F f) {
  try {
    f();
  } catch (const std::logic_error& e) {
    if (std::strstr(e.what(), "transparent") == nullptr) throw;
    seal::Ciphertext zero;
    c.encryptor().encrypt_zero(ct->parms_id(), zero);
    zero.scale() = ct->scale();
    c.evaluator().add_inplace(*ct, zero);
  }
}

// Scale bookkeeping (the invariant is described in cipher_tensor.h).  CheckScale: after a ct x ct product the
// true scale s1 * s2 / prime is kept; it only has to stay near the global scale.
Status CheckScale(const Context& c, const seal::Ciphertext& ct) {
  if (!ScaleWithinDrift(ct.scale(), c.scale())) {
    return FailedPrecondition("ciphertext scale drifted to 2**", std::log2(ct.scale()), " from the global 2**",
                              std::log2(c.scale()), "; global_scale must match the middle primes");
  }
  return ::tensorflow::OkStatus();
}

// After a ct x pt product encoded at PlainScale() the scale equals the global scale up to floating-point
// rounding (~1e-16): set it exactly, so that such results can be added to fresh ciphertexts without snapping.
Status SnapScale(const Context& c, seal::Ciphertext* ct) {
  TF_RETURN_IF_ERROR(CheckScale(c, *ct));
  ct->scale() = c.scale();
  return ::tensorflow::OkStatus();
}

// Two ciphertexts about to be added must have one scale.  At different levels LowerTo matches the scales
// exactly; at the same level with different scales (two ct x ct results of different histories) both are set
// to the global scale S, which changes the values by their relative drift s / S - 1 (below ~3e-3 for primes of
// 27 bits or more).
void AlignScales(const Context& c, seal::Ciphertext* a, seal::Ciphertext* b) {
  if (a->scale() == b->scale()) return;
  a->scale() = c.scale();
  b->scale() = c.scale();
}

size_t Level(const Context& c, const seal::Ciphertext& ct) {
  return c.seal_context().get_context_data(ct.parms_id())->chain_index();
}

// The prime that rescaling a ciphertext at this level divides by.
double LastPrime(const Context& c, const seal::parms_id_type& parms_id) {
  return static_cast<double>(c.seal_context().get_context_data(parms_id)->parms().coeff_modulus().back().value());
}

// The scale to encode the plain factor of a ct x pt product at, so that after the rescale the result has
// exactly the global scale: last prime * S / (the ciphertext's scale).  This also absorbs the drift a
// preceding ct x ct product left (see cipher_tensor.h), at no cost.
double PlainScale(const Context& c, const seal::Ciphertext& ct) {
  return LastPrime(c, ct.parms_id()) * (c.scale() / ct.scale());
}

// Brings `ct` down to the lower level `target` with exactly the scale `target_scale`: modulus switches down to
// one level above the target, then a product with the constant 1 encoded at last prime * target_scale /
// scale, rescaled.  The last step drops the level the modulus switch would have dropped, so the scales of two
// operands at different levels are matched at no cost in depth (and for ~0.1 ms).
void LowerTo(const Context& c, seal::Ciphertext* ct, const seal::parms_id_type& target, double target_scale) {
  const size_t to = c.seal_context().get_context_data(target)->chain_index();
  while (Level(c, *ct) > to + 1) c.evaluator().mod_switch_to_next_inplace(*ct);
  if (ct->scale() == target_scale) {
    c.evaluator().mod_switch_to_next_inplace(*ct);
    return;
  }
  seal::Plaintext one;
  c.encoder().encode(1.0, ct->parms_id(), LastPrime(c, ct->parms_id()) * (target_scale / ct->scale()), one);
  Guarded(c, ct, [&] { c.evaluator().multiply_plain_inplace(*ct, one); });
  c.evaluator().rescale_to_next_inplace(*ct);
  ct->scale() = target_scale;  // equal up to floating-point rounding (~1e-16)
}

Status DepthError(const CipherData& a, const std::string& op, int needed) {
  const Context& c = *a.context;
  return FailedPrecondition("multiplicative depth exhausted: ", op, " needs ", needed,
                            " more level(s) but the ciphertext has ", a.level(), " left (the context ",
                            c.ParamsString(), " gives a fresh ciphertext depth ", c.depth(),
                            "). Create the CKKSContext with one more middle prime in coeff_mod_bit_sizes per "
                            "extra multiplication (e.g. [60, 40, 40, 40, 60] for depth 3, with "
                            "poly_modulus_degree 16384 if the total exceeds the 128-bit limit)");
}

Status NeedLevels(const CipherData& a, const std::string& op, int needed) {
  if (static_cast<int>(a.level()) < needed) return DepthError(a, op, needed);
  return ::tensorflow::OkStatus();
}

Status NeedRelinKeys(const Context& c, const char* op) {
  if (c.relin_keys() == nullptr) {
    return FailedPrecondition(op, ": the context has no relinearization keys (made with relin_keys=False)");
  }
  return ::tensorflow::OkStatus();
}

Status NeedGaloisKeys(const Context& c, const char* op) {
  if (c.galois_keys() == nullptr) {
    return FailedPrecondition(op, ": the context has no Galois (rotation) keys; create it with "
                              "galois_steps=None (all powers of two) or with the steps this operation needs");
  }
  return ::tensorflow::OkStatus();
}

// `*to` = a copy of `from`.  The output ciphertexts of a kernel start empty, and assigning into an empty SEAL
// ciphertext (what Evaluator's out-of-place calls do too: `destination = encrypted`) first zero-fills the new
// buffer and then copies over it; copy construction allocates and copies once (for N = 8192 and three primes,
// 384 KiB not cleared per ciphertext).
void CopyInto(const seal::Ciphertext& from, seal::Ciphertext* to) {
  if (to != &from) *to = seal::Ciphertext(from);
}

void Rotate(const Context& c, const seal::Ciphertext& in, int step, seal::Ciphertext* out) {
  try {
    CopyInto(in, out);
    c.evaluator().rotate_vector_inplace(*out, step, *c.galois_keys());
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(absl::StrCat("rotation by ", step, " failed (", e.what(),
                                             "); add the step to the context's galois_steps"));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Slot layouts.

// Slots of ciphertext `index` of a tensor with cipher's layout and shape, from values in row-major order.
void FillSlots(const CipherData& layout, const double* values, int64_t index, int64_t slot_count,
               std::vector<double>* slots) {
  slots->assign(static_cast<size_t>(slot_count), 0.0);
  if (layout.layout == Layout::kVector) {
    const int64_t n = layout.row_length(), period = layout.period;
    const double* row = values + index * n;
    std::copy(row, row + n, slots->begin());  // (the rest of the period stays zero)
    for (int64_t s = period; s < slot_count; s += period) {
      std::copy(slots->begin(), slots->begin() + period, slots->begin() + s);
    }
  } else {
    const int64_t batch = layout.batch(), features = layout.features();
    for (int64_t b = 0; b < batch; ++b) (*slots)[b] = values[b * features + index];
  }
}

void ReadSlots(const CipherData& layout, const std::vector<double>& slots, int64_t index, double* values) {
  if (layout.layout == Layout::kVector) {
    const int64_t n = layout.row_length();
    std::copy(slots.begin(), slots.begin() + n, values + index * n);
  } else {
    const int64_t batch = layout.batch(), features = layout.features();
    for (int64_t b = 0; b < batch; ++b) values[b * features + index] = slots[b];
  }
}

// The plain operand of a cipher op: float64 with the cipher's number of elements.
Status GetPlain(OpKernelContext* ctx, int index, const CipherData& a, const char* op, const double** values) {
  const Tensor& t = ctx->input(index);
  int64_t n = 1;
  for (int64_t d : a.shape) n *= d;
  if (t.NumElements() != n) {
    return InvalidArgument(op, ": the plain operand has shape ", t.shape().DebugString(),
                           " but the cipher tensor has shape ", a.ShapeString(),
                           " (broadcast it to that shape first)");
  }
  *values = t.flat<double>().data();
  return ::tensorflow::OkStatus();
}

std::shared_ptr<CipherData> LikeWithoutData(const CipherData& a) {
  auto out = std::make_shared<CipherData>();
  out->context = a.context;
  out->layout = a.layout;
  out->shape = a.shape;
  out->period = a.period;
  out->ciphertexts.resize(a.ciphertexts.size());
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Context kernels.

class ContextCreateOp : public OpKernel {
 public:
  explicit ContextCreateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("poly_modulus_degree", &degree_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("coeff_mod_bit_sizes", &bits_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("galois_steps", &steps_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("power_of_two_galois", &power_of_two_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("relin_keys", &relin_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& scale = ctx->input(0);
    OP_REQUIRES(ctx, scale.dims() == 0, InvalidArgument("global_scale must be a scalar"));
    ContextPtr context;
    OP_REQUIRES_OK(ctx, Context::Create(degree_, bits_, scale.scalar<double>()(), steps_, power_of_two_, relin_,
                                        &context));
    SetContextOutput(ctx, std::move(context));
  }

 private:
  int64_t degree_ = 0;
  std::vector<int> bits_, steps_;
  bool power_of_two_ = true, relin_ = true;
};

class ContextPublicOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    ContextPtr context;
    OP_REQUIRES_OK(ctx, GetContext(ctx, 0, &context));
    ContextPtr pub = context->Public();
    OP_REQUIRES(ctx, pub != nullptr, InvalidArgument("could not make the public context"));
    SetContextOutput(ctx, std::move(pub));
  }
};

class ContextSerializeOp : public OpKernel {
 public:
  explicit ContextSerializeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("include_secret_key", &include_secret_));
  }
  void Compute(OpKernelContext* ctx) override {
    ContextPtr context;
    OP_REQUIRES_OK(ctx, GetContext(ctx, 0, &context));
    OP_REQUIRES(ctx, !include_secret_ || context->has_secret_key(),
                FailedPrecondition("include_secret_key=True, but this is a public context without a secret key"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    try {
      out->scalar<::tensorflow::tstring>()() = context->Serialize(include_secret_);
    } catch (const std::exception& e) {
      ctx->CtxFailure(FromException(e, "serialize context"));
    }
  }

 private:
  bool include_secret_ = false;
};

class ContextDeserializeOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& data = ctx->input(0);
    OP_REQUIRES(ctx, data.dims() == 0, InvalidArgument("data must be a scalar string"));
    ContextPtr context;
    try {
      OP_REQUIRES_OK(ctx, Context::Deserialize(std::string(data.scalar<::tensorflow::tstring>()()), &context));
    } catch (const std::exception& e) {
      ctx->CtxFailure(InvalidArgument("tfppml.he: malformed serialized context: ", e.what()));
      return;
    }
    SetContextOutput(ctx, std::move(context));
  }
};

class ContextInfoOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    ContextPtr c;
    OP_REQUIRES_OK(ctx, GetContext(ctx, 0, &c));
    Tensor *info = nullptr, *scale = nullptr, *bits = nullptr, *steps = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({8}), &info));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &scale));
    const auto& b = c->coeff_mod_bit_sizes();
    const auto s = c->GaloisSteps();
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({static_cast<int64_t>(b.size())}), &bits));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({static_cast<int64_t>(s.size())}), &steps));
    auto v = info->vec<int64_t>();
    v(0) = c->poly_modulus_degree();
    v(1) = c->slot_count();
    v(2) = c->depth();
    v(3) = c->has_secret_key();
    v(4) = c->relin_keys() != nullptr;
    v(5) = c->galois_keys() != nullptr;
    v(6) = static_cast<int64_t>(c->key_id()[0]);
    v(7) = static_cast<int64_t>(c->key_id()[1]);
    scale->scalar<double>()() = c->scale();
    for (size_t i = 0; i < b.size(); ++i) bits->vec<int32_t>()(i) = b[i];
    for (size_t i = 0; i < s.size(); ++i) steps->vec<int32_t>()(i) = s[i];
  }
};

// ---------------------------------------------------------------------------------------------------------
// Encryption, decryption, inspection, serialization.

class EncryptOp : public OpKernel {
 public:
  explicit EncryptOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string layout;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("layout", &layout));
    layout_ = layout == "batch" ? Layout::kBatch : Layout::kVector;
  }
  void Compute(OpKernelContext* ctx) override {
    ContextPtr c;
    OP_REQUIRES_OK(ctx, GetContext(ctx, 0, &c));
    const Tensor& values = ctx->input(1);
    OP_REQUIRES(ctx, values.dims() >= 1,
                InvalidArgument("encrypt: values must have rank >= 1, got shape ", values.shape().DebugString()));
    OP_REQUIRES(ctx, values.NumElements() > 0,
                InvalidArgument("encrypt: values must not be empty, got shape ", values.shape().DebugString()));
    auto data = std::make_shared<CipherData>();
    data->context = c;
    data->layout = layout_;
    for (int i = 0; i < values.dims(); ++i) data->shape.push_back(values.dim_size(i));
    const int64_t slots = c->slot_count();
    if (layout_ == Layout::kVector) {
      OP_REQUIRES(ctx, data->row_length() <= slots,
                  InvalidArgument("encrypt: the last axis (", data->row_length(), ") must fit into the ", slots,
                                  " slots of a ciphertext in the vector layout; use layout='batch' or a larger "
                                  "poly_modulus_degree"));
      data->period = NextPow2(data->row_length());
    } else {
      OP_REQUIRES(ctx, data->batch() <= slots,
                  InvalidArgument("encrypt: the batch (first axis, ", data->batch(), ") must fit into the ",
                                  slots, " slots of a ciphertext in the batch layout"));
    }
    const int64_t count = data->expected_count();
    data->ciphertexts.resize(count);
    const double* v = values.flat<double>().data();
    const auto parms_id = c->seal_context().first_parms_id();
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, count, "encrypt", [&](int64_t i) {
      std::vector<double> slot_values;
      FillSlots(*data, v, i, slots, &slot_values);
      seal::Plaintext pt;
      c->encoder().encode(slot_values, parms_id, c->scale(), pt);
      c->encryptor().encrypt(pt, data->ciphertexts[i]);
      return ::tensorflow::OkStatus();
    }));
    SetCipherOutput(ctx, std::move(data));
  }

 private:
  Layout layout_;
};

class DecryptOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    ContextPtr c;
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetContext(ctx, 0, &c));
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 1, &a));
    OP_REQUIRES(ctx, c->decryptor() != nullptr,
                FailedPrecondition("decrypt: this context holds no secret key (it is a public context); only "
                                   "the party that created the key set can decrypt"));
    OP_REQUIRES_OK(ctx, SameKeySet(*c, *a->context, "decrypt"));
    Tensor* out = nullptr;
    TensorShape shape;
    for (int64_t d : a->shape) OP_REQUIRES_OK(ctx, shape.AddDimWithStatus(d));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    double* v = out->flat<double>().data();
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, a->ciphertexts.size(), "decrypt", [&](int64_t i) {
      seal::Plaintext pt;
      c->decryptor()->decrypt(a->ciphertexts[i], pt);
      std::vector<double> slots;
      c->encoder().decode(pt, slots);
      ReadSlots(*a, slots, i, v);
      return ::tensorflow::OkStatus();
    }));
  }
};

class CipherInfoOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    Tensor *shape = nullptr, *info = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({static_cast<int64_t>(a->shape.size())}), &shape));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({6}), &info));
    for (size_t i = 0; i < a->shape.size(); ++i) shape->vec<int64_t>()(i) = a->shape[i];
    auto v = info->vec<int64_t>();
    v(0) = static_cast<int64_t>(a->layout);
    v(1) = static_cast<int64_t>(a->level());
    v(2) = a->period;
    v(3) = static_cast<int64_t>(a->ciphertexts.size());
    v(4) = static_cast<int64_t>(a->context->key_id()[0]);
    v(5) = static_cast<int64_t>(a->context->key_id()[1]);
  }
};

class SerializeOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    try {
      out->scalar<::tensorflow::tstring>()() = SerializeCipher(*a);
    } catch (const std::exception& e) {
      ctx->CtxFailure(FromException(e, "serialize"));
    }
  }
};

class DeserializeOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    ContextPtr c;
    OP_REQUIRES_OK(ctx, GetContext(ctx, 0, &c));
    const Tensor& data = ctx->input(1);
    OP_REQUIRES(ctx, data.dims() == 0, InvalidArgument("data must be a scalar string"));
    CipherPtr out;
    try {
      OP_REQUIRES_OK(ctx, DeserializeCipher(c, std::string(data.scalar<::tensorflow::tstring>()()), &out));
    } catch (const std::exception& e) {
      ctx->CtxFailure(InvalidArgument("tfppml.he: malformed serialized ciphertext tensor: ", e.what()));
      return;
    }
    SetCipherOutput(ctx, std::move(out));
  }
};

// ---------------------------------------------------------------------------------------------------------
// Arithmetic.

enum class BinaryKind { kAdd, kSub, kMul };

class BinaryOp : public OpKernel {
 public:
  BinaryOp(OpKernelConstruction* ctx, BinaryKind kind) : OpKernel(ctx), kind_(kind) {}
  void Compute(OpKernelContext* ctx) override {
    const char* op = kind_ == BinaryKind::kAdd ? "add" : kind_ == BinaryKind::kSub ? "sub" : "mul";
    CipherPtr a, b;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 1, &b));
    OP_REQUIRES_OK(ctx, SameKeySet(*a->context, *b->context, op));
    OP_REQUIRES(ctx, a->shape == b->shape && a->layout == b->layout,
                InvalidArgument(op, ": cipher tensors of shapes ", a->ShapeString(), " and ", b->ShapeString(),
                                " (layouts ", static_cast<int>(a->layout), ", ", static_cast<int>(b->layout),
                                ") cannot be combined: shapes and layouts must be equal"));
    const Context& c = *a->context;
    const bool mul = kind_ == BinaryKind::kMul;
    if (mul) {
      OP_REQUIRES_OK(ctx, NeedLevels(*(a->level() < b->level() ? a : b), "cipher * cipher", 1));
      OP_REQUIRES_OK(ctx, NeedRelinKeys(c, op));
    }
    auto out = LikeWithoutData(*a);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, a->ciphertexts.size(), op, [&](int64_t i) {
      seal::Ciphertext& r = out->ciphertexts[i];
      CopyInto(a->ciphertexts[i], &r);
      const seal::Ciphertext* y = &b->ciphertexts[i];
      seal::Ciphertext switched;
      const size_t la = Level(c, r), lb = Level(c, *y);
      const bool same_scale = mul || r.scale() == y->scale();  // (a product keeps whatever scales it gets)
      if (la > lb) {
        if (same_scale) {
          c.evaluator().mod_switch_to_inplace(r, y->parms_id());
        } else {
          LowerTo(c, &r, y->parms_id(), y->scale());
        }
      } else if (lb > la) {
        CopyInto(*y, &switched);
        if (same_scale) {
          c.evaluator().mod_switch_to_inplace(switched, r.parms_id());
        } else {
          LowerTo(c, &switched, r.parms_id(), r.scale());
        }
        y = &switched;
      }
      seal::Ciphertext rescaled;
      if (kind_ != BinaryKind::kMul && r.scale() != y->scale()) {
        CopyInto(*y, &rescaled);
        AlignScales(c, &r, &rescaled);
        y = &rescaled;
      }
      switch (kind_) {
        case BinaryKind::kAdd:
          Guarded(c, &r, [&] { c.evaluator().add_inplace(r, *y); });
          return ::tensorflow::OkStatus();
        case BinaryKind::kSub:
          Guarded(c, &r, [&] { c.evaluator().sub_inplace(r, *y); });
          return ::tensorflow::OkStatus();
        case BinaryKind::kMul:
          Guarded(c, &r, [&] { c.evaluator().multiply_inplace(r, *y); });
          c.evaluator().relinearize_inplace(r, *c.relin_keys());
          c.evaluator().rescale_to_next_inplace(r);
          return CheckScale(c, r);
      }
      return ::tensorflow::OkStatus();
    }));
    SetCipherOutput(ctx, std::move(out));
  }

 private:
  BinaryKind kind_;
};

enum class PlainKind { kAdd, kSub, kMul };

class PlainOp : public OpKernel {
 public:
  PlainOp(OpKernelConstruction* ctx, PlainKind kind) : OpKernel(ctx), kind_(kind) {}
  void Compute(OpKernelContext* ctx) override {
    const char* op = kind_ == PlainKind::kAdd ? "add_plain" : kind_ == PlainKind::kSub ? "sub_plain" : "mul_plain";
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    const double* plain = nullptr;
    OP_REQUIRES_OK(ctx, GetPlain(ctx, 1, *a, op, &plain));
    const Context& c = *a->context;
    if (kind_ == PlainKind::kMul) OP_REQUIRES_OK(ctx, NeedLevels(*a, "cipher * plain", 1));
    auto out = LikeWithoutData(*a);
    const int64_t slots = c.slot_count();
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, a->ciphertexts.size(), op, [&](int64_t i) {
      seal::Ciphertext& r = out->ciphertexts[i];
      CopyInto(a->ciphertexts[i], &r);
      std::vector<double> slot_values;
      FillSlots(*a, plain, i, slots, &slot_values);
      seal::Plaintext pt;
      if (kind_ == PlainKind::kMul) {
        c.encoder().encode(slot_values, r.parms_id(), PlainScale(c, r), pt);
        Guarded(c, &r, [&] { c.evaluator().multiply_plain_inplace(r, pt); });
        c.evaluator().rescale_to_next_inplace(r);
        return SnapScale(c, &r);
      }
      c.encoder().encode(slot_values, r.parms_id(), r.scale(), pt);
      if (kind_ == PlainKind::kAdd) {
        Guarded(c, &r, [&] { c.evaluator().add_plain_inplace(r, pt); });
      } else {
        Guarded(c, &r, [&] { c.evaluator().sub_plain_inplace(r, pt); });
      }
      return ::tensorflow::OkStatus();
    }));
    SetCipherOutput(ctx, std::move(out));
  }

 private:
  PlainKind kind_;
};

class NegOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    const Context& c = *a->context;
    auto out = LikeWithoutData(*a);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, a->ciphertexts.size(), "neg", [&](int64_t i) {
      CopyInto(a->ciphertexts[i], &out->ciphertexts[i]);
      Guarded(c, &out->ciphertexts[i], [&] { c.evaluator().negate_inplace(out->ciphertexts[i]); });
      return ::tensorflow::OkStatus();
    }));
    SetCipherOutput(ctx, std::move(out));
  }
};

class SquareOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    const Context& c = *a->context;
    OP_REQUIRES_OK(ctx, NeedLevels(*a, "square", 1));
    OP_REQUIRES_OK(ctx, NeedRelinKeys(c, "square"));
    auto out = LikeWithoutData(*a);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, a->ciphertexts.size(), "square", [&](int64_t i) {
      seal::Ciphertext& r = out->ciphertexts[i];
      CopyInto(a->ciphertexts[i], &r);
      Guarded(c, &r, [&] { c.evaluator().square_inplace(r); });
      c.evaluator().relinearize_inplace(r, *c.relin_keys());
      c.evaluator().rescale_to_next_inplace(r);
      return CheckScale(c, r);
    }));
    SetCipherOutput(ctx, std::move(out));
  }
};

// Levels x^k costs: ceil(log2 k).
int PowerDepth(int64_t k) {
  int d = 0;
  while ((int64_t{1} << d) < k) ++d;
  return d;
}

class PolyvalOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    const Tensor& coeff_t = ctx->input(1);
    OP_REQUIRES(ctx, coeff_t.dims() == 1 && coeff_t.NumElements() >= 1,
                InvalidArgument("polyval: coefficients must be a non-empty vector, got shape ",
                                coeff_t.shape().DebugString()));
    std::vector<double> coeffs(coeff_t.flat<double>().data(),
                               coeff_t.flat<double>().data() + coeff_t.NumElements());
    for (double v : coeffs) {
      OP_REQUIRES(ctx, std::isfinite(v), InvalidArgument("polyval: coefficients must be finite"));
    }
    while (coeffs.size() > 1 && coeffs.back() == 0.0) coeffs.pop_back();
    const int64_t degree = static_cast<int64_t>(coeffs.size()) - 1;
    OP_REQUIRES(ctx, degree <= 64, InvalidArgument("polyval: degree ", degree, " is above the supported 64"));
    const Context& c = *a->context;
    int needed = 0;
    for (int64_t k = 1; k <= degree; ++k) {
      if (coeffs[k] != 0.0) needed = std::max(needed, PowerDepth(k) + (coeffs[k] != 1.0 ? 1 : 0));
    }
    OP_REQUIRES_OK(ctx, NeedLevels(*a, absl::StrCat("polyval of degree ", degree), needed));
    if (degree >= 2) OP_REQUIRES_OK(ctx, NeedRelinKeys(c, "polyval"));
    auto out = LikeWithoutData(*a);
    const int64_t slots = c.slot_count();
    int64_t elements = 1;
    for (int64_t d : a->shape) elements *= d;
    const std::vector<double> constant(static_cast<size_t>(elements), coeffs[0]);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, a->ciphertexts.size(), "polyval", [&](int64_t i) {
      std::map<int64_t, seal::Ciphertext> powers;
      powers.emplace(1, a->ciphertexts[i]);
      // x^k = x^(2^j) * x^(k - 2^j) with 2^j the largest power of two below k: depth ceil(log2 k).
      std::function<const seal::Ciphertext&(int64_t)> power = [&](int64_t k) -> const seal::Ciphertext& {
        auto it = powers.find(k);
        if (it != powers.end()) return it->second;
        int64_t hi = 1;
        while (hi * 2 < k) hi *= 2;
        seal::Ciphertext x = power(hi);
        seal::Ciphertext y = power(k - hi);
        if (Level(c, x) > Level(c, y)) c.evaluator().mod_switch_to_inplace(x, y.parms_id());
        if (Level(c, y) > Level(c, x)) c.evaluator().mod_switch_to_inplace(y, x.parms_id());
        Guarded(c, &x, [&] { c.evaluator().multiply_inplace(x, y); });
        c.evaluator().relinearize_inplace(x, *c.relin_keys());
        c.evaluator().rescale_to_next_inplace(x);
        Status s = CheckScale(c, x);
        if (!s.ok()) throw std::runtime_error(std::string(s.message()));
        return powers[k] = std::move(x);
      };
      std::vector<seal::Ciphertext> terms;
      for (int64_t k = 1; k <= degree; ++k) {
        if (coeffs[k] == 0.0) continue;
        seal::Ciphertext t = power(k);
        if (coeffs[k] != 1.0) {
          seal::Plaintext pt;
          c.encoder().encode(coeffs[k], t.parms_id(), PlainScale(c, t), pt);
          Guarded(c, &t, [&] { c.evaluator().multiply_plain_inplace(t, pt); });
          c.evaluator().rescale_to_next_inplace(t);
          TF_RETURN_IF_ERROR(SnapScale(c, &t));
        }
        terms.push_back(std::move(t));
      }
      seal::Ciphertext& r = out->ciphertexts[i];
      if (terms.empty()) {
        c.encryptor().encrypt_zero(a->ciphertexts[i].parms_id(), r);
        r.scale() = c.scale();
      } else {
        size_t lowest = Level(c, terms[0]);
        seal::parms_id_type target = terms[0].parms_id();
        double target_scale = terms[0].scale();
        for (const auto& t : terms) {
          if (Level(c, t) < lowest) {
            lowest = Level(c, t);
            target = t.parms_id();
            target_scale = t.scale();
          }
        }
        r = std::move(terms[0]);
        if (r.parms_id() != target) LowerTo(c, &r, target, target_scale);
        for (size_t t = 1; t < terms.size(); ++t) {
          if (terms[t].parms_id() != target) LowerTo(c, &terms[t], target, target_scale);
          AlignScales(c, &r, &terms[t]);
          Guarded(c, &r, [&] { c.evaluator().add_inplace(r, terms[t]); });
        }
      }
      if (coeffs[0] != 0.0) {
        std::vector<double> slot_values;
        FillSlots(*a, constant.data(), i, slots, &slot_values);
        seal::Plaintext pt;
        c.encoder().encode(slot_values, r.parms_id(), r.scale(), pt);
        Guarded(c, &r, [&] { c.evaluator().add_plain_inplace(r, pt); });
      }
      return ::tensorflow::OkStatus();
    }));
    SetCipherOutput(ctx, std::move(out));
  }
};

class SumOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    const Context& c = *a->context;
    auto out = std::make_shared<CipherData>();
    out->context = a->context;
    out->layout = a->layout;
    out->shape = a->shape;
    out->shape.back() = 1;
    if (a->layout == Layout::kVector) {
      if (a->period > 1) OP_REQUIRES_OK(ctx, NeedGaloisKeys(c, "sum"));
      out->period = 1;
      out->ciphertexts.resize(a->ciphertexts.size());
      OP_REQUIRES_OK(ctx, ParallelSeal(ctx, a->ciphertexts.size(), "sum", [&](int64_t i) {
        seal::Ciphertext& r = out->ciphertexts[i];
        CopyInto(a->ciphertexts[i], &r);
        seal::Ciphertext rotated;
        for (int64_t s = 1; s < a->period; s <<= 1) {
          Rotate(c, r, static_cast<int>(s), &rotated);
          Guarded(c, &r, [&] { c.evaluator().add_inplace(r, rotated); });
        }
        return ::tensorflow::OkStatus();
      }));
    } else {
      const int64_t n = a->shape.back();
      const int64_t groups = a->features() / n;
      out->ciphertexts.resize(groups);
      OP_REQUIRES_OK(ctx, ParallelSeal(ctx, groups, "sum", [&](int64_t g) {
        seal::Ciphertext& r = out->ciphertexts[g];
        CopyInto(a->ciphertexts[g * n], &r);
        for (int64_t t = 1; t < n; ++t) {
          Guarded(c, &r, [&] { c.evaluator().add_inplace(r, a->ciphertexts[g * n + t]); });
        }
        return ::tensorflow::OkStatus();
      }));
    }
    SetCipherOutput(ctx, std::move(out));
  }
};

class RotateOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    const Tensor& steps_t = ctx->input(1);
    OP_REQUIRES(ctx, steps_t.dims() == 0, InvalidArgument("rotate: steps must be a scalar"));
    OP_REQUIRES(ctx, a->layout == Layout::kVector,
                InvalidArgument("rotate: needs the vector layout (each row in its own ciphertext)"));
    const int64_t n = a->row_length();
    OP_REQUIRES(ctx, n == a->period,
                InvalidArgument("rotate: the row length must be a power of two for a cyclic rotation, got ", n));
    const int64_t steps = ((steps_t.scalar<int64_t>()() % n) + n) % n;
    const Context& c = *a->context;
    if (steps != 0) OP_REQUIRES_OK(ctx, NeedGaloisKeys(c, "rotate"));
    auto out = LikeWithoutData(*a);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, a->ciphertexts.size(), "rotate", [&](int64_t i) {
      if (steps == 0) {
        CopyInto(a->ciphertexts[i], &out->ciphertexts[i]);
      } else {
        Rotate(c, a->ciphertexts[i], static_cast<int>(steps), &out->ciphertexts[i]);
      }
      return ::tensorflow::OkStatus();
    }));
    SetCipherOutput(ctx, std::move(out));
  }
};

// ---------------------------------------------------------------------------------------------------------
// Matrix product with a plain matrix.

// Baby-step count of the diagonal method for m' output diagonals: B = 2^ceil(log2(m') / 2), G = m' / B.
int64_t BabySteps(int64_t m_pad) {
  int64_t b = 1;
  while (b * b < m_pad) b <<= 1;
  return b;
}

class MatMulPlainOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    CipherPtr a;
    OP_REQUIRES_OK(ctx, GetCipher(ctx, 0, &a));
    const Tensor& w = ctx->input(1);
    OP_REQUIRES(ctx, w.dims() == 2,
                InvalidArgument("matmul: the plain matrix must have rank 2, got shape ", w.shape().DebugString()));
    const int64_t n = a->shape.back(), m = w.dim_size(1);
    OP_REQUIRES(ctx, w.dim_size(0) == n && m >= 1,
                InvalidArgument("matmul: a cipher tensor of shape ", a->ShapeString(),
                                " cannot be multiplied by a plain matrix of shape ", w.shape().DebugString(),
                                ": the matrix needs ", n, " rows"));
    const double* wv = w.flat<double>().data();
    for (int64_t i = 0; i < n * m; ++i) {
      OP_REQUIRES(ctx, std::isfinite(wv[i]) && std::fabs(wv[i]) < 1e6,
                  InvalidArgument("matmul: plain matrix entries must be finite and below 1e6 in magnitude"));
    }
    OP_REQUIRES_OK(ctx, NeedLevels(*a, "cipher @ plain", 1));
    if (a->layout == Layout::kVector) {
      VectorLayout(ctx, *a, wv, n, m);
    } else {
      BatchLayout(ctx, *a, wv, n, m);
    }
  }

 private:
  // Each row x (period p) times W [n, m]: with m' = next_pow2(m) and d = max(p, m'), the output is
  // z = sum_k diag_k * rot(x, k) for k < m', diag_k[j] = W[(j + k) mod d, j mod m'] (zero outside W), followed by
  // folding z over blocks of m' (log2(d / m') rotations).  Baby-step/giant-step: k = g B + b and
  // diag_k * rot(x, k) = rot(rot(diag_k, -g B) * rot(x, b), g B), so only B - 1 + G - 1 rotations are needed.
  void VectorLayout(OpKernelContext* ctx, const CipherData& a, const double* w, int64_t n, int64_t m) {
    const Context& c = *a.context;
    const int64_t slots = c.slot_count();
    const int64_t m_pad = NextPow2(m);
    OP_REQUIRES(ctx, m_pad <= slots,
                InvalidArgument("matmul: ", m, " output columns do not fit into ", slots, " slots"));
    const int64_t d = std::max(a.period, m_pad);
    const int64_t baby = BabySteps(m_pad), giant = m_pad / baby;
    if (m_pad > 1 || d > m_pad) OP_REQUIRES_OK(ctx, NeedGaloisKeys(c, "matmul"));
    const seal::parms_id_type parms_id = a.ciphertexts.front().parms_id();
    const double in_scale = a.ciphertexts.front().scale();  // one scale per tensor (cipher_tensor.h)
    const double plain_scale = PlainScale(c, a.ciphertexts.front());

    // The pre-rotated diagonals, encoded once for all rows.
    std::vector<seal::Plaintext> diags(m_pad);
    std::vector<char> nonzero(m_pad, 0);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, m_pad, "matmul", [&](int64_t k) {
      const int64_t g = k / baby;
      std::vector<double> block(d, 0.0);
      bool any = false;
      for (int64_t j = 0; j < d; ++j) {
        const int64_t j0 = ((j - g * baby) % d + d) % d;  // rot(diag_k, -g B)[j] = diag_k[j - g B]
        const int64_t out_col = j0 % m_pad, in_row = (j0 + k) % d;
        if (out_col < m && in_row < n) {
          block[j] = w[in_row * m + out_col];
          any = any || block[j] != 0.0;
        }
      }
      if (!any) return ::tensorflow::OkStatus();
      nonzero[k] = 1;
      std::vector<double> slot_values(slots);
      for (int64_t s = 0; s < slots; ++s) slot_values[s] = block[s & (d - 1)];
      c.encoder().encode(slot_values, parms_id, plain_scale, diags[k]);
      return ::tensorflow::OkStatus();
    }));

    const int64_t rows = static_cast<int64_t>(a.ciphertexts.size());
    // Baby steps rot(x, b), b = 1..B-1, for every row.
    std::vector<seal::Ciphertext> babies(rows * baby);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, rows * baby, "matmul", [&](int64_t t) {
      const int64_t r = t / baby, b = t % baby;
      bool used = false;
      for (int64_t g = 0; g < giant; ++g) used = used || nonzero[g * baby + b];
      if (!used) return ::tensorflow::OkStatus();
      if (b == 0) {
        CopyInto(a.ciphertexts[r], &babies[t]);
      } else {
        Rotate(c, a.ciphertexts[r], static_cast<int>(b), &babies[t]);
      }
      return ::tensorflow::OkStatus();
    }));
    // Giant steps: one partial sum per (row, g).
    std::vector<seal::Ciphertext> partial(rows * giant);
    std::vector<char> has_partial(rows * giant, 0);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, rows * giant, "matmul", [&](int64_t t) {
      const int64_t r = t / giant, g = t % giant;
      seal::Ciphertext inner;  // (a moved-from SEAL ciphertext has no memory pool: never reuse one)
      bool first = true;
      for (int64_t b = 0; b < baby; ++b) {
        const int64_t k = g * baby + b;
        if (!nonzero[k]) continue;
        seal::Ciphertext product;
        c.evaluator().multiply_plain(babies[r * baby + b], diags[k], product);
        if (first) {
          inner = std::move(product);
          first = false;
        } else {
          Guarded(c, &inner, [&] { c.evaluator().add_inplace(inner, product); });
        }
      }
      if (first) return ::tensorflow::OkStatus();
      if (g == 0) {
        partial[t] = std::move(inner);
      } else {
        Rotate(c, inner, static_cast<int>(g * baby), &partial[t]);
      }
      has_partial[t] = 1;
      return ::tensorflow::OkStatus();
    }));
    auto out = std::make_shared<CipherData>();
    out->context = a.context;
    out->layout = Layout::kVector;
    out->shape = a.shape;
    out->shape.back() = m;
    out->period = m_pad;
    out->ciphertexts.resize(rows);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, rows, "matmul", [&](int64_t r) {
      seal::Ciphertext& acc = out->ciphertexts[r];
      bool first = true;
      for (int64_t g = 0; g < giant; ++g) {
        if (!has_partial[r * giant + g]) continue;
        if (first) {
          acc = std::move(partial[r * giant + g]);
          first = false;
        } else {
          Guarded(c, &acc, [&] { c.evaluator().add_inplace(acc, partial[r * giant + g]); });
        }
      }
      if (first) {  // an all-zero matrix
        c.encryptor().encrypt_zero(parms_id, acc);
        acc.scale() = in_scale * plain_scale;
      }
      c.evaluator().rescale_to_next_inplace(acc);
      TF_RETURN_IF_ERROR(SnapScale(c, &acc));
      seal::Ciphertext rotated;
      for (int64_t s = m_pad; s < d; s <<= 1) {
        Rotate(c, acc, static_cast<int>(s), &rotated);
        Guarded(c, &acc, [&] { c.evaluator().add_inplace(acc, rotated); });
      }
      return ::tensorflow::OkStatus();
    }));
    SetCipherOutput(ctx, std::move(out));
  }

  // Batch layout: feature ciphertexts; out[g, i] = sum_t W[t, i] * in[g, t].  Per RNS prime the ciphertext words
  // (NTT form) are multiplied by the integer round(W[t, i] * plain scale) and summed exactly in 128-bit
  // accumulators, reduced once per kReducePeriod inputs; each output is then rescaled once.  The work is tiled:
  // a task owns kTile coefficients of one (poly, prime) row for a block of kOutBlock outputs, so each tile of an
  // input ciphertext is read once per block while the block's accumulators (16 KB) stay in L1.  (Going output
  // by output re-read all n input ciphertexts from memory for every output and left the kernel memory-bound:
  // ~3x slower for a 784x128 layer.)  Zero weights are skipped, so a lowered convolution costs only its taps.
  static constexpr int64_t kOutBlock = 16;
  static constexpr size_t kTile = 64;
  // Products are < q^2 < 2^120 (SEAL primes have at most 60 bits) and a reduced accumulator is < q, so 255
  // products fit into 128 bits; 128 keeps a margin.
  static constexpr int64_t kReducePeriod = 128;

  void BatchLayout(OpKernelContext* ctx, const CipherData& a, const double* w, int64_t n, int64_t m) {
    const Context& c = *a.context;
    const seal::parms_id_type parms_id = a.ciphertexts.front().parms_id();
    const auto& context_data = *c.seal_context().get_context_data(parms_id);
    const auto& moduli = context_data.parms().coeff_modulus();
    const size_t limbs = moduli.size();
    const size_t degree = context_data.parms().poly_modulus_degree();
    // Weights as integers at the last prime's scale, corrected for a drifted input scale (PlainScale).
    const double in_scale = a.ciphertexts.front().scale();
    const double plain_scale = PlainScale(c, a.ciphertexts.front());
    const int64_t groups = a.features() / n;
    for (int64_t t = 0; t < n * m; ++t) {
      OP_REQUIRES(ctx, std::fabs(w[t]) * plain_scale < 0x1p62,
                  InvalidArgument("matmul: plain matrix entry ", w[t], " is too large for the batch layout at "
                                  "this scale (|w| * 2**", std::log2(plain_scale), " must stay below 2**62)"));
    }

    // Integer weights per prime (residues in [0, q)).
    std::vector<uint64_t> wq(static_cast<size_t>(n * m) * limbs);
    std::vector<char> wz(static_cast<size_t>(n * m), 0);
    for (int64_t t = 0; t < n * m; ++t) {
      const double scaled = std::round(w[t] * plain_scale);
      wz[t] = scaled == 0.0;
      const bool negative = scaled < 0;
      const uint64_t mag = static_cast<uint64_t>(std::fabs(scaled));  // < 2^62, checked above
      for (size_t l = 0; l < limbs; ++l) {
        const uint64_t q = moduli[l].value();
        uint64_t v = mag % q;
        if (negative && v != 0) v = q - v;
        wq[t * limbs + l] = v;
      }
    }
    // The nonzero weights of each output block, ordered by input: (input t, output within the block).
    const int64_t blocks = (m + kOutBlock - 1) / kOutBlock;
    std::vector<std::vector<std::pair<int32_t, int32_t>>> entries(blocks);
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t width = std::min<int64_t>(kOutBlock, m - blk * kOutBlock);
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t o = 0; o < width; ++o) {
          if (!wz[t * m + blk * kOutBlock + o]) entries[blk].emplace_back(static_cast<int32_t>(t), o);
        }
      }
    }

    auto out = std::make_shared<CipherData>();
    out->context = a.context;
    out->layout = Layout::kBatch;
    out->shape = a.shape;
    out->shape.back() = m;
    out->ciphertexts.resize(groups * m);
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, groups * m, "matmul", [&](int64_t task) {
      // (a copy takes the parms_id, size 2 and NTT form; the data is overwritten below)
      CopyInto(a.ciphertexts[(task / m) * n], &out->ciphertexts[task]);
      return ::tensorflow::OkStatus();
    }));
    const size_t rows = 2 * limbs, tiles = degree / kTile;
    const int64_t tasks = groups * blocks * static_cast<int64_t>(rows * tiles);
    using u128 = unsigned __int128;
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, tasks, "matmul", [&](int64_t task) {
      const size_t tile = task % tiles;
      int64_t rest = task / static_cast<int64_t>(tiles);
      const size_t row = rest % rows;  // poly * limbs + prime
      rest /= static_cast<int64_t>(rows);
      const int64_t blk = rest % blocks, g = rest / blocks;
      const size_t l = row % limbs;
      const seal::Modulus& q = moduli[l];
      const size_t offset = row * degree + tile * kTile;
      u128 acc[kOutBlock][kTile] = {};
      auto reduce = [&](u128& v) {
        const uint64_t parts[2] = {static_cast<uint64_t>(v), static_cast<uint64_t>(v >> 64)};
        v = seal::util::barrett_reduce_128(parts, q);
      };
      int64_t last_t = -1, since_reduce = 0;
      const uint64_t* x = nullptr;
      for (const auto& [t, o] : entries[blk]) {
        if (t != last_t) {
          last_t = t;
          if (++since_reduce > kReducePeriod) {
            for (auto& lane : acc) {
              for (auto& v : lane) reduce(v);
            }
            since_reduce = 1;
          }
          x = a.ciphertexts[g * n + t].data() + offset;
        }
        const uint64_t wv = wq[(static_cast<size_t>(t) * m + blk * kOutBlock + o) * limbs + l];
        u128* lane = acc[o];
        for (size_t k = 0; k < kTile; ++k) lane[k] += static_cast<u128>(x[k]) * wv;
      }
      const int64_t width = std::min<int64_t>(kOutBlock, m - blk * kOutBlock);
      for (int64_t o = 0; o < width; ++o) {
        uint64_t* dst = out->ciphertexts[g * m + blk * kOutBlock + o].data() + offset;
        for (size_t k = 0; k < kTile; ++k) {
          reduce(acc[o][k]);
          dst[k] = static_cast<uint64_t>(acc[o][k]);
        }
      }
      return ::tensorflow::OkStatus();
    }));
    OP_REQUIRES_OK(ctx, ParallelSeal(ctx, groups * m, "matmul", [&](int64_t task) {
      seal::Ciphertext& r = out->ciphertexts[task];
      r.scale() = in_scale * plain_scale;
      if (r.is_transparent()) {  // an all-zero column
        seal::Ciphertext zero;
        c.encryptor().encrypt_zero(parms_id, zero);
        zero.scale() = r.scale();
        c.evaluator().add_inplace(r, zero);
      }
      c.evaluator().rescale_to_next_inplace(r);
      return SnapScale(c, &r);
    }));
    SetCipherOutput(ctx, std::move(out));
  }
};

// ---------------------------------------------------------------------------------------------------------

#define TFPPML_REGISTER(name, kernel) REGISTER_KERNEL_BUILDER(Name(name).Device(DEVICE_CPU), kernel)

TFPPML_REGISTER("TfppmlCkksContextCreate", ContextCreateOp);
TFPPML_REGISTER("TfppmlCkksContextPublic", ContextPublicOp);
TFPPML_REGISTER("TfppmlCkksContextSerialize", ContextSerializeOp);
TFPPML_REGISTER("TfppmlCkksContextDeserialize", ContextDeserializeOp);
TFPPML_REGISTER("TfppmlCkksContextInfo", ContextInfoOp);
TFPPML_REGISTER("TfppmlCkksEncrypt", EncryptOp);
TFPPML_REGISTER("TfppmlCkksDecrypt", DecryptOp);
TFPPML_REGISTER("TfppmlCkksCipherInfo", CipherInfoOp);
TFPPML_REGISTER("TfppmlCkksSerialize", SerializeOp);
TFPPML_REGISTER("TfppmlCkksDeserialize", DeserializeOp);
TFPPML_REGISTER("TfppmlCkksNeg", NegOp);
TFPPML_REGISTER("TfppmlCkksSquare", SquareOp);
TFPPML_REGISTER("TfppmlCkksPolyval", PolyvalOp);
TFPPML_REGISTER("TfppmlCkksSum", SumOp);
TFPPML_REGISTER("TfppmlCkksRotate", RotateOp);
TFPPML_REGISTER("TfppmlCkksMatMulPlain", MatMulPlainOp);

class AddOp : public BinaryOp {
 public:
  explicit AddOp(OpKernelConstruction* ctx) : BinaryOp(ctx, BinaryKind::kAdd) {}
};
class SubOp : public BinaryOp {
 public:
  explicit SubOp(OpKernelConstruction* ctx) : BinaryOp(ctx, BinaryKind::kSub) {}
};
class MulOp : public BinaryOp {
 public:
  explicit MulOp(OpKernelConstruction* ctx) : BinaryOp(ctx, BinaryKind::kMul) {}
};
class AddPlainOp : public PlainOp {
 public:
  explicit AddPlainOp(OpKernelConstruction* ctx) : PlainOp(ctx, PlainKind::kAdd) {}
};
class SubPlainOp : public PlainOp {
 public:
  explicit SubPlainOp(OpKernelConstruction* ctx) : PlainOp(ctx, PlainKind::kSub) {}
};
class MulPlainOp : public PlainOp {
 public:
  explicit MulPlainOp(OpKernelConstruction* ctx) : PlainOp(ctx, PlainKind::kMul) {}
};

TFPPML_REGISTER("TfppmlCkksAdd", AddOp);
TFPPML_REGISTER("TfppmlCkksSub", SubOp);
TFPPML_REGISTER("TfppmlCkksMul", MulOp);
TFPPML_REGISTER("TfppmlCkksAddPlain", AddPlainOp);
TFPPML_REGISTER("TfppmlCkksSubPlain", SubPlainOp);
TFPPML_REGISTER("TfppmlCkksMulPlain", MulPlainOp);

#undef TFPPML_REGISTER

}  // namespace he
}  // namespace tfppml
