// CKKS state carried through TensorFlow as tf.variant scalars: a key set (`Context`) and encrypted tensors
// (`CipherTensor`).
//
// Design (see tfppml/he/__init__.py for the user-facing version):
//  * A `Context` is SEAL's CKKS parameters plus a key set.  The public key, secret key, relinearization keys
//    and Galois keys are separate, immutable, reference-counted objects; `Public()` makes a second context
//    that shares the public material and holds no secret key at all, which is what a server receives.
//    Each key set gets a random 128-bit id at key generation; every binary op checks that both operands carry
//    the same id, so ciphertexts of two key sets are never mixed (SEAL alone cannot tell: equal parameters
//    give equal parms_ids).
//  * A context travels through TF as a `ContextVariant` (a shared_ptr), so its lifetime is the lifetime of
//    the tensors that reference it, in eager mode and inside tf.function alike.
//  * A `CipherTensor` is an immutable, shared list of SEAL ciphertexts plus the logical shape and the slot
//    layout (below).  Invariants kept by every kernel: all ciphertexts of a tensor are at the same level, have
//    size 2 (relinearized), and share one scale, which is the true scale of their encoding and lies within
//    kMaxScaleDrift of the context's global scale.  Scales: a ct x ct product rescaled by the prime q has
//    scale s1 * s2 / q, which is not the global scale S (q is only near 2^bits: 1e-6 away for 40-bit primes
//    at N = 8192, but 1e-3 for 28-bit ones).  It is kept as it is, not snapped to S (snapping would change
//    the value by that same relative amount); the next ct x pt product encodes its plaintext at
//    q' * S / s instead of q', which brings the result back to exactly S; operands of an addition at two
//    levels are matched exactly by the step that lowers one of them.  Only adding two ciphertexts of different
//    scales at the same level snaps them to S (the one place that error remains).  Slots outside the tensor's
//    data hold zero (vector layout: replicas, see below).
//  * Layouts.  kVector: shape [..., n]; each row (last axis) is one ciphertext, zero-padded to the period
//    p = next_pow2(n) and replicated slot_count / p times, so a rotation of the whole slot vector is a cyclic
//    rotation of the padded row (what the diagonal matmul needs).  kBatch: shape [B, ...]; one ciphertext per
//    feature (each index of the trailing axes), the B samples in its first B slots: matmul becomes scalar
//    multiply-adds and needs no rotation, so many samples share one ciphertext.
#ifndef TFPPML_CC_HE_CIPHER_TENSOR_H_
#define TFPPML_CC_HE_CIPHER_TENSOR_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "seal/seal.h"
#include "tensorflow/core/framework/variant_tensor_data.h"
#include "tensorflow/core/platform/status.h"

namespace tfppml {
namespace he {

using KeyId = std::array<uint64_t, 2>;

class Context {
 public:
  // Generates a new key set.  `galois_steps`: rotation steps to make Galois keys for; with
  // `power_of_two_steps` the keys for every +-2^k are made as well (any step then works, composed).
  static tensorflow::Status Create(int64_t poly_modulus_degree, const std::vector<int>& coeff_mod_bit_sizes,
                                   double global_scale, const std::vector<int>& galois_steps,
                                   bool power_of_two_steps, bool relin_keys,
                                   std::shared_ptr<const Context>* out);
  // Parses what Serialize() wrote.  Refuses parameters below 128-bit security and malformed data.
  static tensorflow::Status Deserialize(const std::string& bytes, std::shared_ptr<const Context>* out);

  std::string Serialize(bool include_secret_key) const;
  // The same key set without the secret key.
  std::shared_ptr<const Context> Public() const;

  const seal::SEALContext& seal_context() const { return *seal_context_; }
  const seal::CKKSEncoder& encoder() const { return *encoder_; }
  const seal::Evaluator& evaluator() const { return *evaluator_; }
  const seal::Encryptor& encryptor() const { return *encryptor_; }
  // Null in a public context.  (SEAL's Decryptor::decrypt is thread-safe but not const.)
  seal::Decryptor* decryptor() const { return decryptor_.get(); }
  const seal::RelinKeys* relin_keys() const { return relin_keys_.get(); }
  const seal::GaloisKeys* galois_keys() const { return galois_keys_.get(); }
  bool has_secret_key() const { return secret_key_ != nullptr; }

  double scale() const { return scale_; }
  const KeyId& key_id() const { return key_id_; }
  int64_t slot_count() const { return static_cast<int64_t>(encoder_->slot_count()); }
  int64_t poly_modulus_degree() const { return poly_modulus_degree_; }
  const std::vector<int>& coeff_mod_bit_sizes() const { return bit_sizes_; }
  // Multiplicative depth of a fresh ciphertext (number of rescales it can take).
  int depth() const;
  // Whether a rotation by `step` has a key of its own (otherwise it is composed of power-of-two rotations).
  bool HasGaloisKeyForStep(int step) const;
  std::vector<int> GaloisSteps() const { return galois_steps_; }

  // "[60, 40, 40, 60]" for messages.
  std::string ParamsString() const;

 private:
  Context() = default;
  static tensorflow::Status Assemble(std::shared_ptr<seal::SEALContext> seal_context, double scale,
                                     const KeyId& key_id, std::shared_ptr<const seal::PublicKey> public_key,
                                     std::shared_ptr<const seal::SecretKey> secret_key,
                                     std::shared_ptr<const seal::RelinKeys> relin_keys,
                                     std::shared_ptr<const seal::GaloisKeys> galois_keys,
                                     std::vector<int> galois_steps, std::shared_ptr<const Context>* out);

  std::shared_ptr<seal::SEALContext> seal_context_;
  std::unique_ptr<seal::CKKSEncoder> encoder_;
  std::unique_ptr<seal::Evaluator> evaluator_;
  std::unique_ptr<seal::Encryptor> encryptor_;
  std::unique_ptr<seal::Decryptor> decryptor_;
  std::shared_ptr<const seal::PublicKey> public_key_;
  std::shared_ptr<const seal::SecretKey> secret_key_;
  std::shared_ptr<const seal::RelinKeys> relin_keys_;
  std::shared_ptr<const seal::GaloisKeys> galois_keys_;
  std::vector<int> galois_steps_;
  std::vector<int> bit_sizes_;
  int64_t poly_modulus_degree_ = 0;
  double scale_ = 0;
  KeyId key_id_{};
};

// Checks the CKKS parameters the way Context::Create does (security level, scale against the primes).
tensorflow::Status CheckParameters(int64_t poly_modulus_degree, const std::vector<int>& coeff_mod_bit_sizes,
                                   double global_scale);

// The tf.variant payload of a context handle.
class ContextVariant {
 public:
  static constexpr const char kTypeName[] = "tfppml.he.Context";
  ContextVariant() = default;
  explicit ContextVariant(std::shared_ptr<const Context> context) : context(std::move(context)) {}
  std::string TypeName() const { return kTypeName; }
  // A key set never leaves the process through TF's generic variant encoding (which would also copy the
  // secret key): use the serialize op, which asks whether the secret key goes too.
  void Encode(tensorflow::VariantTensorData* data) const;
  bool Decode(const tensorflow::VariantTensorData& data);
  std::string DebugString() const;

  std::shared_ptr<const Context> context;
};

enum class Layout : int32_t { kVector = 0, kBatch = 1 };

struct CipherData {
  std::shared_ptr<const Context> context;
  Layout layout = Layout::kVector;
  std::vector<int64_t> shape;
  int64_t period = 0;  // kVector: slot period of a row (power of two >= shape.back()); kBatch: 0
  std::vector<seal::Ciphertext> ciphertexts;

  int64_t rows() const;       // kVector: product of shape[:-1]
  int64_t row_length() const; // kVector: shape.back()
  int64_t batch() const;      // kBatch: shape[0]
  int64_t features() const;   // kBatch: product of shape[1:]
  int64_t expected_count() const;
  // chain index of the ciphertexts' level (0 = last level: no multiplication left)
  size_t level() const;
  std::string ShapeString() const;
};

class CipherTensor {
 public:
  static constexpr const char kTypeName[] = "tfppml.he.CipherTensor";
  CipherTensor() = default;
  explicit CipherTensor(std::shared_ptr<const CipherData> data) : data(std::move(data)) {}
  std::string TypeName() const { return kTypeName; }
  void Encode(tensorflow::VariantTensorData* data) const;
  bool Decode(const tensorflow::VariantTensorData& data);
  std::string DebugString() const;

  std::shared_ptr<const CipherData> data;
};

// Serialization of a cipher tensor (self-describing, tied to its key set by the key id).
std::string SerializeCipher(const CipherData& cipher);
tensorflow::Status DeserializeCipher(const std::shared_ptr<const Context>& context, const std::string& bytes,
                                     std::shared_ptr<const CipherData>* out);

// Smallest power of two >= n (n >= 1).
int64_t NextPow2(int64_t n);

// How far (relative) a ciphertext's scale may drift from the global scale (see the scale invariant above).
// Drift comes only from the distance of the primes to 2^bits (below 1e-2 for primes of 26 bits or more at
// N <= 32768); a larger one means misuse (e.g. a scale that does not match the primes), which is refused.
constexpr double kMaxScaleDrift = 1.0 / 16;

inline bool ScaleWithinDrift(double scale, double global_scale) {
  const double ratio = scale / global_scale;
  return ratio > 1.0 - kMaxScaleDrift && ratio < 1.0 + kMaxScaleDrift;
}

}  // namespace he
}  // namespace tfppml

#endif  // TFPPML_CC_HE_CIPHER_TENSOR_H_
