"""The op-library macro of the Bazel build: the same sources and flags as setup.py's Extension."""

load("@local_config_tf//:flags.bzl", "TF_COPTS", "TF_LINKOPTS")

# setup.py's COMMON_COMPILE_ARGS, in the same order (tests/test_build_sources.py checks that they agree).
# They come after TensorFlow's own flags (TF_COPTS, from tf.sysconfig at configure time), as in setup.py.
TFPPML_COPTS = ["-O3", "-g0", "-fvisibility=hidden", "-DNDEBUG", "-Wno-sign-compare"]

def repo_paths_to_labels(paths, package = "cc"):
    """Labels of files given by repository-root paths ("cc/ops/x.cc" -> "//cc:ops/x.cc").

    cc/sources.bzl names files from the repository root, as setup.py wants them; since cc/ is a Bazel
    package (it has to be, for //cc:sources.bzl to load), its files are labels of //cc.
    """
    prefix = package + "/"
    labels = []
    for path in paths:
        if not path.startswith(prefix):
            fail("%s is not under %s: tfppml_op_library takes the files of //%s" % (path, prefix, package))
        labels.append("//%s:%s" % (package, path[len(prefix):]))
    return labels

def tfppml_op_library(name, srcs, hdrs = [], deps = [], **kwargs):
    """A TensorFlow custom-op shared library, for tf.load_op_library.

    Args:
      name: the target, also the file name of the library (e.g. "_tfppml_ops.so").
      srcs: .cc files as repository-root paths, e.g. TFPPML_OPS_SRCS of //cc:sources.bzl.
      hdrs: headers as repository-root paths (sources include them as "cc/kernels/x.h").
      deps: further cc dependencies.
      **kwargs: passed on to cc_binary (visibility, tags, ...).
    """
    native.cc_binary(
        name = name,
        srcs = repo_paths_to_labels(srcs) + repo_paths_to_labels(hdrs),
        copts = TF_COPTS + TFPPML_COPTS,
        linkopts = TF_LINKOPTS,
        linkshared = True,
        deps = deps + [
            "@local_config_tf//:tf_framework",
            "@local_config_tf//:tf_headers",
        ],
        **kwargs
    )
