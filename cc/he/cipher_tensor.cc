// Key sets, cipher tensors and their serialization (see cipher_tensor.h for the design).
#include "cc/he/cipher_tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "seal/randomgen.h"
#include "tensorflow/core/platform/errors.h"

namespace tfppml {
namespace he {

using ::tensorflow::Status;
using ::tensorflow::errors::InvalidArgument;

constexpr char kMagic[8] = {'T', 'F', 'P', 'P', 'M', 'L', 'H', 'E'};
constexpr uint32_t kFormatVersion = 1;
constexpr uint32_t kKindContext = 1;
constexpr uint32_t kKindCipher = 2;
constexpr uint32_t kHasSecretKey = 1, kHasRelinKeys = 2, kHasGaloisKeys = 4;
constexpr int kMaxRank = 8;
constexpr int64_t kMaxCiphertexts = int64_t{1} << 22;

int64_t NextPow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

namespace {

// Little-endian byte writer/reader; the reader checks every bound.
class Writer {
 public:
  template <typename T>
  void Put(T v) {
    static_assert(std::is_trivially_copyable<T>::value, "plain values only");
    const char* p = reinterpret_cast<const char*>(&v);
    out_.append(p, sizeof(T));
  }
  void PutBytes(const char* p, size_t n) { out_.append(p, n); }
  template <typename SealObject>
  void PutSeal(const SealObject& obj) {
    const auto size = obj.save_size(seal::compr_mode_type::none);
    std::string buf(static_cast<size_t>(size), '\0');
    const auto written = obj.save(reinterpret_cast<seal::seal_byte*>(&buf[0]), buf.size(),
                                  seal::compr_mode_type::none);
    buf.resize(static_cast<size_t>(written));
    Put<uint64_t>(buf.size());
    out_ += buf;
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(const std::string& in) : in_(in) {}
  template <typename T>
  Status Get(T* v, const char* what) {
    if (in_.size() - pos_ < sizeof(T)) return Truncated(what);
    std::memcpy(v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return ::tensorflow::OkStatus();
  }
  // A length-prefixed section; returns a pointer into the input.
  Status GetSection(const char** data, size_t* size, const char* what) {
    uint64_t n = 0;
    TF_RETURN_IF_ERROR(Get(&n, what));
    if (n > in_.size() - pos_) return Truncated(what);
    *data = in_.data() + pos_;
    *size = static_cast<size_t>(n);
    pos_ += n;
    return ::tensorflow::OkStatus();
  }
  Status ExpectHeader(uint32_t kind, const char* what) {
    if (in_.size() < sizeof(kMagic) || std::memcmp(in_.data(), kMagic, sizeof(kMagic)) != 0) {
      return InvalidArgument("tfppml.he: the data is not a serialized tfppml ", what,
                             " (bad magic bytes; was it made by tfppml.he?)");
    }
    pos_ = sizeof(kMagic);
    uint32_t version = 0, got_kind = 0;
    TF_RETURN_IF_ERROR(Get(&version, what));
    if (version != kFormatVersion) {
      return InvalidArgument("tfppml.he: serialized ", what, " has format version ", version,
                             ", this tfppml reads version ", kFormatVersion);
    }
    TF_RETURN_IF_ERROR(Get(&got_kind, what));
    if (got_kind != kind) {
      return InvalidArgument("tfppml.he: expected a serialized ", what, " but the data holds a ",
                             got_kind == kKindContext  ? "context"
                             : got_kind == kKindCipher ? "ciphertext tensor"
                                                       : "unknown object");
    }
    return ::tensorflow::OkStatus();
  }
  Status ExpectEnd(const char* what) const {
    if (pos_ != in_.size()) {
      return InvalidArgument("tfppml.he: serialized ", what, " has ", in_.size() - pos_,
                             " unexpected trailing bytes");
    }
    return ::tensorflow::OkStatus();
  }
  size_t remaining() const { return in_.size() - pos_; }

 private:
  Status Truncated(const char* what) const {
    return InvalidArgument("tfppml.he: serialized ", what, " is truncated (", in_.size(), " bytes)");
  }
  const std::string& in_;
  size_t pos_ = 0;
};

// Loads a SEAL object from a section, turning SEAL's exceptions into InvalidArgument.
template <typename SealObject>
Status LoadSeal(const seal::SEALContext& context, const char* data, size_t size, const char* what,
                SealObject* obj) {
  try {
    const auto used = obj->load(context, reinterpret_cast<const seal::seal_byte*>(data), size);
    if (static_cast<size_t>(used) != size) {
      return InvalidArgument("tfppml.he: serialized ", what, " has a length that does not match its content");
    }
  } catch (const std::exception& e) {
    return InvalidArgument("tfppml.he: serialized ", what, " is malformed or does not belong to this "
                           "context: ", e.what());
  }
  return ::tensorflow::OkStatus();
}

std::vector<int> BitSizes(const seal::EncryptionParameters& parms) {
  std::vector<int> bits;
  for (const auto& m : parms.coeff_modulus()) bits.push_back(m.bit_count());
  return bits;
}

}  // namespace

Status CheckParameters(int64_t poly_modulus_degree, const std::vector<int>& bits, double scale) {
  if (poly_modulus_degree < 1024 || poly_modulus_degree > 32768 ||
      (poly_modulus_degree & (poly_modulus_degree - 1)) != 0) {
    return InvalidArgument("poly_modulus_degree must be a power of two in [1024, 32768], got ",
                           poly_modulus_degree);
  }
  if (bits.size() < 2) {
    return InvalidArgument("coeff_mod_bit_sizes needs at least 2 primes (data primes and the special "
                           "key-switching prime), got ", bits.size());
  }
  int total = 0;
  for (int b : bits) {
    if (b < 20 || b > 60) {
      return InvalidArgument("coeff_mod_bit_sizes entries must be in [20, 60], got ", b, " in [",
                             absl::StrJoin(bits, ", "), "]");
    }
    total += b;
  }
  const int max_bits = seal::CoeffModulus::MaxBitCount(static_cast<size_t>(poly_modulus_degree),
                                                       seal::sec_level_type::tc128);
  if (total > max_bits) {
    return InvalidArgument("parameters below 128-bit security refused: coeff_mod_bit_sizes [",
                           absl::StrJoin(bits, ", "), "] total ", total, " bits, but poly_modulus_degree ",
                           poly_modulus_degree, " allows at most ", max_bits,
                           " bits for 128-bit security (HomomorphicEncryption.org standard). Use fewer or "
                           "smaller primes, or a larger poly_modulus_degree");
  }
  if (!std::isfinite(scale) || scale < 2.0) {
    return InvalidArgument("global_scale must be a finite number >= 2, got ", scale);
  }
  const double log_scale = std::log2(scale);
  if (log_scale >= bits.front()) {
    return InvalidArgument("global_scale 2**", log_scale, " must be below the first prime (", bits.front(),
                           " bits), or decryption overflows");
  }
  // Rescaling divides by the middle primes: the scale must equal them for products to keep the scale.
  for (size_t i = 1; i + 1 < bits.size(); ++i) {
    if (std::fabs(log_scale - bits[i]) > 1e-9) {
      return InvalidArgument("global_scale must be 2**b where b is the bit size of the middle primes of "
                             "coeff_mod_bit_sizes (rescaling divides by them), got global_scale 2**",
                             log_scale, " with coeff_mod_bit_sizes [", absl::StrJoin(bits, ", "), "]");
    }
  }
  return ::tensorflow::OkStatus();
}

Status Context::Assemble(std::shared_ptr<seal::SEALContext> seal_context, double scale, const KeyId& key_id,
                         std::shared_ptr<const seal::PublicKey> public_key,
                         std::shared_ptr<const seal::SecretKey> secret_key,
                         std::shared_ptr<const seal::RelinKeys> relin_keys,
                         std::shared_ptr<const seal::GaloisKeys> galois_keys, std::vector<int> galois_steps,
                         std::shared_ptr<const Context>* out) {
  std::shared_ptr<Context> c(new Context());
  try {
    c->seal_context_ = std::move(seal_context);
    const auto& parms = c->seal_context_->key_context_data()->parms();
    c->bit_sizes_ = BitSizes(parms);
    c->poly_modulus_degree_ = static_cast<int64_t>(parms.poly_modulus_degree());
    c->encoder_ = std::make_unique<seal::CKKSEncoder>(*c->seal_context_);
    c->evaluator_ = std::make_unique<seal::Evaluator>(*c->seal_context_);
    c->encryptor_ = std::make_unique<seal::Encryptor>(*c->seal_context_, *public_key);
    if (secret_key) c->decryptor_ = std::make_unique<seal::Decryptor>(*c->seal_context_, *secret_key);
  } catch (const std::exception& e) {
    return InvalidArgument("tfppml.he: could not set up the CKKS context: ", e.what());
  }
  c->public_key_ = std::move(public_key);
  c->secret_key_ = std::move(secret_key);
  c->relin_keys_ = std::move(relin_keys);
  c->galois_keys_ = std::move(galois_keys);
  c->galois_steps_ = std::move(galois_steps);
  c->scale_ = scale;
  c->key_id_ = key_id;
  *out = std::move(c);
  return ::tensorflow::OkStatus();
}

Status Context::Create(int64_t poly_modulus_degree, const std::vector<int>& bits, double scale,
                       const std::vector<int>& galois_steps, bool power_of_two_steps, bool make_relin_keys,
                       std::shared_ptr<const Context>* out) {
  TF_RETURN_IF_ERROR(CheckParameters(poly_modulus_degree, bits, scale));
  const int64_t slots = poly_modulus_degree / 2;
  std::set<int> steps;
  for (int s : galois_steps) {
    if (s <= -slots || s >= slots) {
      return InvalidArgument("galois_steps entries must be in (-", slots, ", ", slots, ") for ", slots,
                             " slots, got ", s);
    }
    if (s != 0) steps.insert(s);
  }
  if (power_of_two_steps) {
    for (int64_t p = 1; p < slots; p <<= 1) {
      steps.insert(static_cast<int>(p));
      steps.insert(static_cast<int>(-p));
    }
  }
  try {
    seal::EncryptionParameters parms(seal::scheme_type::ckks);
    parms.set_poly_modulus_degree(static_cast<size_t>(poly_modulus_degree));
    parms.set_coeff_modulus(seal::CoeffModulus::Create(static_cast<size_t>(poly_modulus_degree), bits));
    auto seal_context = std::make_shared<seal::SEALContext>(parms, true, seal::sec_level_type::tc128);
    if (!seal_context->parameters_set()) {
      return InvalidArgument("SEAL refused the CKKS parameters (poly_modulus_degree ", poly_modulus_degree,
                             ", coeff_mod_bit_sizes [", absl::StrJoin(bits, ", "),
                             "]): ", seal_context->parameter_error_message());
    }
    seal::KeyGenerator keygen(*seal_context);
    auto secret_key = std::make_shared<seal::SecretKey>(keygen.secret_key());
    auto public_key = std::make_shared<seal::PublicKey>();
    keygen.create_public_key(*public_key);
    std::shared_ptr<seal::RelinKeys> relin_keys;
    if (make_relin_keys) {
      relin_keys = std::make_shared<seal::RelinKeys>();
      keygen.create_relin_keys(*relin_keys);
    }
    std::shared_ptr<seal::GaloisKeys> galois_keys;
    std::vector<int> step_list(steps.begin(), steps.end());
    if (!step_list.empty()) {
      galois_keys = std::make_shared<seal::GaloisKeys>();
      keygen.create_galois_keys(step_list, *galois_keys);
    }
    const KeyId key_id = {seal::random_uint64(), seal::random_uint64()};
    return Assemble(std::move(seal_context), scale, key_id, std::move(public_key), std::move(secret_key),
                    std::move(relin_keys), std::move(galois_keys), std::move(step_list), out);
  } catch (const std::exception& e) {
    return InvalidArgument("SEAL could not create the CKKS context (poly_modulus_degree ", poly_modulus_degree,
                           ", coeff_mod_bit_sizes [", absl::StrJoin(bits, ", "), "]): ", e.what());
  }
}

std::shared_ptr<const Context> Context::Public() const {
  std::shared_ptr<const Context> out;
  // Cannot fail: the same objects were assembled once already.
  Status s = Assemble(seal_context_, scale_, key_id_, public_key_, nullptr, relin_keys_, galois_keys_,
                      galois_steps_, &out);
  return s.ok() ? out : nullptr;
}

int Context::depth() const {
  return static_cast<int>(seal_context_->first_context_data()->chain_index());
}

bool Context::HasGaloisKeyForStep(int step) const {
  if (!galois_keys_) return false;
  const auto* tool = seal_context_->key_context_data()->galois_tool();
  return galois_keys_->has_key(tool->get_elt_from_step(step));
}

std::string Context::ParamsString() const {
  return absl::StrCat("poly_modulus_degree=", poly_modulus_degree_, ", coeff_mod_bit_sizes=[",
                      absl::StrJoin(bit_sizes_, ", "), "]");
}

std::string Context::Serialize(bool include_secret_key) const {
  Writer w;
  w.PutBytes(kMagic, sizeof(kMagic));
  w.Put<uint32_t>(kFormatVersion);
  w.Put<uint32_t>(kKindContext);
  w.Put<double>(scale_);
  w.Put<uint64_t>(key_id_[0]);
  w.Put<uint64_t>(key_id_[1]);
  uint32_t flags = 0;
  if (include_secret_key && secret_key_) flags |= kHasSecretKey;
  if (relin_keys_) flags |= kHasRelinKeys;
  if (galois_keys_) flags |= kHasGaloisKeys;
  w.Put<uint32_t>(flags);
  w.PutSeal(seal_context_->key_context_data()->parms());
  w.PutSeal(*public_key_);
  if (flags & kHasSecretKey) w.PutSeal(*secret_key_);
  if (flags & kHasRelinKeys) w.PutSeal(*relin_keys_);
  if (flags & kHasGaloisKeys) {
    w.PutSeal(*galois_keys_);
    w.Put<uint32_t>(static_cast<uint32_t>(galois_steps_.size()));
    for (int s : galois_steps_) w.Put<int32_t>(s);
  }
  return w.Take();
}

Status Context::Deserialize(const std::string& bytes, std::shared_ptr<const Context>* out) {
  Reader r(bytes);
  TF_RETURN_IF_ERROR(r.ExpectHeader(kKindContext, "context"));
  double scale = 0;
  KeyId key_id{};
  uint32_t flags = 0;
  TF_RETURN_IF_ERROR(r.Get(&scale, "context"));
  TF_RETURN_IF_ERROR(r.Get(&key_id[0], "context"));
  TF_RETURN_IF_ERROR(r.Get(&key_id[1], "context"));
  TF_RETURN_IF_ERROR(r.Get(&flags, "context"));
  if (flags & ~(kHasSecretKey | kHasRelinKeys | kHasGaloisKeys)) {
    return InvalidArgument("tfppml.he: serialized context has unknown flags ", flags);
  }
  const char* data = nullptr;
  size_t size = 0;
  TF_RETURN_IF_ERROR(r.GetSection(&data, &size, "context"));
  seal::EncryptionParameters parms;
  try {
    const auto used = parms.load(reinterpret_cast<const seal::seal_byte*>(data), size);
    if (static_cast<size_t>(used) != size) throw std::invalid_argument("length mismatch");
  } catch (const std::exception& e) {
    return InvalidArgument("tfppml.he: serialized context has malformed encryption parameters: ", e.what());
  }
  if (parms.scheme() != seal::scheme_type::ckks) {
    return InvalidArgument("tfppml.he: serialized context is not a CKKS context");
  }
  TF_RETURN_IF_ERROR(CheckParameters(static_cast<int64_t>(parms.poly_modulus_degree()), BitSizes(parms), scale));
  std::shared_ptr<seal::SEALContext> seal_context;
  try {
    seal_context = std::make_shared<seal::SEALContext>(parms, true, seal::sec_level_type::tc128);
  } catch (const std::exception& e) {
    return InvalidArgument("tfppml.he: serialized context has invalid parameters: ", e.what());
  }
  if (!seal_context->parameters_set()) {
    return InvalidArgument("tfppml.he: SEAL refused the serialized parameters: ",
                           seal_context->parameter_error_message());
  }
  auto public_key = std::make_shared<seal::PublicKey>();
  TF_RETURN_IF_ERROR(r.GetSection(&data, &size, "context"));
  TF_RETURN_IF_ERROR(LoadSeal(*seal_context, data, size, "public key", public_key.get()));
  std::shared_ptr<seal::SecretKey> secret_key;
  if (flags & kHasSecretKey) {
    secret_key = std::make_shared<seal::SecretKey>();
    TF_RETURN_IF_ERROR(r.GetSection(&data, &size, "context"));
    TF_RETURN_IF_ERROR(LoadSeal(*seal_context, data, size, "secret key", secret_key.get()));
  }
  std::shared_ptr<seal::RelinKeys> relin_keys;
  if (flags & kHasRelinKeys) {
    relin_keys = std::make_shared<seal::RelinKeys>();
    TF_RETURN_IF_ERROR(r.GetSection(&data, &size, "context"));
    TF_RETURN_IF_ERROR(LoadSeal(*seal_context, data, size, "relinearization keys", relin_keys.get()));
  }
  std::shared_ptr<seal::GaloisKeys> galois_keys;
  std::vector<int> steps;
  if (flags & kHasGaloisKeys) {
    galois_keys = std::make_shared<seal::GaloisKeys>();
    TF_RETURN_IF_ERROR(r.GetSection(&data, &size, "context"));
    TF_RETURN_IF_ERROR(LoadSeal(*seal_context, data, size, "Galois keys", galois_keys.get()));
    uint32_t n = 0;
    TF_RETURN_IF_ERROR(r.Get(&n, "context"));
    if (n > r.remaining() / sizeof(int32_t)) {
      return InvalidArgument("tfppml.he: serialized context is truncated (Galois steps)");
    }
    for (uint32_t i = 0; i < n; ++i) {
      int32_t s = 0;
      TF_RETURN_IF_ERROR(r.Get(&s, "context"));
      steps.push_back(s);
    }
  }
  TF_RETURN_IF_ERROR(r.ExpectEnd("context"));
  return Assemble(std::move(seal_context), scale, key_id, std::move(public_key), std::move(secret_key),
                  std::move(relin_keys), std::move(galois_keys), std::move(steps), out);
}

void ContextVariant::Encode(tensorflow::VariantTensorData* data) const {
  data->set_type_name(TypeName());
}

bool ContextVariant::Decode(const tensorflow::VariantTensorData& data) { return false; }

std::string ContextVariant::DebugString() const {
  if (!context) return "tfppml.he.Context(empty)";
  return absl::StrCat("tfppml.he.Context(", context->ParamsString(), ", scale=2**", std::log2(context->scale()),
                      context->has_secret_key() ? ", secret key" : ", public", ")");
}

int64_t CipherData::rows() const {
  int64_t r = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) r *= shape[i];
  return r;
}
int64_t CipherData::row_length() const { return shape.back(); }
int64_t CipherData::batch() const { return shape.front(); }
int64_t CipherData::features() const {
  int64_t f = 1;
  for (size_t i = 1; i < shape.size(); ++i) f *= shape[i];
  return f;
}
int64_t CipherData::expected_count() const { return layout == Layout::kVector ? rows() : features(); }

size_t CipherData::level() const {
  return context->seal_context().get_context_data(ciphertexts.front().parms_id())->chain_index();
}

std::string CipherData::ShapeString() const { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

void CipherTensor::Encode(tensorflow::VariantTensorData* d) const { d->set_type_name(TypeName()); }
bool CipherTensor::Decode(const tensorflow::VariantTensorData& d) { return false; }

std::string CipherTensor::DebugString() const {
  if (!data) return "tfppml.he.CipherTensor(empty)";
  return absl::StrCat("tfppml.he.CipherTensor(shape=", data->ShapeString(),
                      data->layout == Layout::kVector ? ", layout=vector" : ", layout=batch",
                      ", ciphertexts=", data->ciphertexts.size(), ")");
}

std::string SerializeCipher(const CipherData& cipher) {
  Writer w;
  w.PutBytes(kMagic, sizeof(kMagic));
  w.Put<uint32_t>(kFormatVersion);
  w.Put<uint32_t>(kKindCipher);
  w.Put<uint64_t>(cipher.context->key_id()[0]);
  w.Put<uint64_t>(cipher.context->key_id()[1]);
  w.Put<int32_t>(static_cast<int32_t>(cipher.layout));
  w.Put<uint32_t>(static_cast<uint32_t>(cipher.shape.size()));
  for (int64_t d : cipher.shape) w.Put<int64_t>(d);
  w.Put<int64_t>(cipher.period);
  w.Put<uint64_t>(cipher.ciphertexts.size());
  for (const auto& ct : cipher.ciphertexts) w.PutSeal(ct);
  return w.Take();
}

Status DeserializeCipher(const std::shared_ptr<const Context>& context, const std::string& bytes,
                         std::shared_ptr<const CipherData>* out) {
  const char* what = "ciphertext tensor";
  Reader r(bytes);
  TF_RETURN_IF_ERROR(r.ExpectHeader(kKindCipher, what));
  KeyId key_id{};
  TF_RETURN_IF_ERROR(r.Get(&key_id[0], what));
  TF_RETURN_IF_ERROR(r.Get(&key_id[1], what));
  if (key_id != context->key_id()) {
    return InvalidArgument("tfppml.he: the serialized ciphertext tensor was encrypted under another key set "
                           "than this context's (key ids differ); ciphertexts of two contexts never mix");
  }
  auto c = std::make_shared<CipherData>();
  c->context = context;
  int32_t layout = 0;
  uint32_t rank = 0;
  TF_RETURN_IF_ERROR(r.Get(&layout, what));
  if (layout != static_cast<int32_t>(Layout::kVector) && layout != static_cast<int32_t>(Layout::kBatch)) {
    return InvalidArgument("tfppml.he: serialized ciphertext tensor has unknown layout ", layout);
  }
  c->layout = static_cast<Layout>(layout);
  TF_RETURN_IF_ERROR(r.Get(&rank, what));
  if (rank < 1 || rank > kMaxRank) {
    return InvalidArgument("tfppml.he: serialized ciphertext tensor has rank ", rank, ", expected 1..",
                           kMaxRank);
  }
  int64_t total = 1;
  for (uint32_t i = 0; i < rank; ++i) {
    int64_t d = 0;
    TF_RETURN_IF_ERROR(r.Get(&d, what));
    if (d < 1 || d > kMaxCiphertexts * context->slot_count()) {
      return InvalidArgument("tfppml.he: serialized ciphertext tensor has invalid dimension ", d);
    }
    total *= d;
    if (total > kMaxCiphertexts * context->slot_count()) {
      return InvalidArgument("tfppml.he: serialized ciphertext tensor is implausibly large");
    }
    c->shape.push_back(d);
  }
  TF_RETURN_IF_ERROR(r.Get(&c->period, what));
  const int64_t slots = context->slot_count();
  if (c->layout == Layout::kVector) {
    if (c->row_length() > slots || c->period != NextPow2(c->row_length())) {
      return InvalidArgument("tfppml.he: serialized ciphertext tensor has an inconsistent row layout");
    }
  } else if (c->batch() > slots || c->period != 0) {
    return InvalidArgument("tfppml.he: serialized ciphertext tensor has an inconsistent batch layout");
  }
  uint64_t count = 0;
  TF_RETURN_IF_ERROR(r.Get(&count, what));
  if (static_cast<int64_t>(count) != c->expected_count() || count > r.remaining() / 16) {
    return InvalidArgument("tfppml.he: serialized ciphertext tensor holds ", count,
                           " ciphertexts, but its shape needs ", c->expected_count());
  }
  c->ciphertexts.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    const char* data = nullptr;
    size_t size = 0;
    TF_RETURN_IF_ERROR(r.GetSection(&data, &size, what));
    seal::Ciphertext& ct = c->ciphertexts[i];
    TF_RETURN_IF_ERROR(LoadSeal(context->seal_context(), data, size, "ciphertext", &ct));
    if (ct.size() != 2 || !ct.is_ntt_form() || !ScaleWithinDrift(ct.scale(), context->scale()) ||
        ct.scale() != c->ciphertexts[0].scale() || ct.parms_id() != c->ciphertexts[0].parms_id() ||
        context->seal_context().get_context_data(ct.parms_id()) == nullptr ||
        ct.parms_id() == context->seal_context().key_parms_id()) {
      return InvalidArgument("tfppml.he: serialized ciphertext ", i, " does not fit this context (size, "
                             "scale or level differs from what tfppml.he produces)");
    }
  }
  TF_RETURN_IF_ERROR(r.ExpectEnd(what));
  *out = std::move(c);
  return ::tensorflow::OkStatus();
}

}  // namespace he
}  // namespace tfppml
