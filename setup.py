"""Build tfppml and its TensorFlow custom-op libraries.

The kernels must be compiled against the very TensorFlow they will be loaded into, so the compile and link
flags come from `tf.sysconfig` at build time and the build runs without pip's build isolation:

    pip install -r requirements.lock && pip install --no-build-isolation -e .

(`make install` does exactly this.)  The source list is shared with Bazel's BUILD through cc/sources.bzl.
"""

from __future__ import annotations

import ast
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
REQUIRED_TENSORFLOW = "2.14.1"

# Baseline x86-64 code only: hot loops that want AVX2 carry their own `target` attributes and are chosen at
# run time, so the library loads on any x86-64 CPU.  -g0 keeps the libraries small (TF headers are huge).
COMMON_COMPILE_ARGS = ["-O3", "-g0", "-fvisibility=hidden", "-DNDEBUG", "-Wno-sign-compare"]


def read_source_lists() -> dict[str, list[str]]:
    """Returns the name -> list-of-paths assignments of cc/sources.bzl."""
    tree = ast.parse((ROOT / "cc" / "sources.bzl").read_text(), filename="cc/sources.bzl")
    lists: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            (target,) = node.targets
            lists[target.id] = ast.literal_eval(node.value)
    return lists


# Microsoft SEAL 4.1.2 for the HE kernels: built by scripts/build_seal.sh (`make install` runs it) into a cache
# outside the source tree.
SEAL_DIR = pathlib.Path(
    os.environ.get("TFPPML_SEAL_DIR", pathlib.Path.home() / ".cache" / "tfppml" / "seal-4.1.2")
).expanduser()
SEAL_INCLUDE = SEAL_DIR / "include" / "SEAL-4.1"
SEAL_LIBRARY = SEAL_DIR / "lib" / "libseal-4.1.a"
HE_EXTENSION = "tfppml.he._tfppml_he"


def check_seal(extensions: list) -> list:
    """The extensions to build: without SEAL, a clear error (or, with TFPPML_WITHOUT_HE=1, no HE kernels)."""
    if SEAL_LIBRARY.is_file() and (SEAL_INCLUDE / "seal" / "seal.h").is_file():
        return extensions
    message = (
        f"tfppml: SEAL 4.1.2 is not built ({SEAL_LIBRARY} is missing), so the HE kernels ({HE_EXTENSION}) "
        "cannot be linked. Run `bash scripts/build_seal.sh` (`make install` does it), or set TFPPML_SEAL_DIR "
        "to where it was installed."
    )
    if os.environ.get("TFPPML_WITHOUT_HE") == "1":
        print(f"WARNING: {message} Building without them (TFPPML_WITHOUT_HE=1): tfppml.he raises on use.")
        return [ext for ext in extensions if ext.name != HE_EXTENSION]
    raise SystemExit(f"{message} To build the rest of tfppml without HE, set TFPPML_WITHOUT_HE=1.")


def tensorflow_flags() -> tuple[list[str], list[str]]:
    """Compile and link flags of the installed TensorFlow, or a clear error naming the fix."""
    try:
        import tensorflow as tf
    except ImportError as err:
        raise SystemExit(
            "tfppml: building the kernels needs tensorflow=="
            f"{REQUIRED_TENSORFLOW} installed in this Python ({err}). Run `make install`, or "
            "`pip install -r requirements.lock` first and build with `pip install --no-build-isolation -e .` "
            "(with build isolation the build environment has no TensorFlow)."
        ) from err
    if tf.__version__ != REQUIRED_TENSORFLOW:
        raise SystemExit(
            f"tfppml: the kernels must be built against tensorflow=={REQUIRED_TENSORFLOW}, "
            f"but this Python has tensorflow=={tf.__version__}. Install requirements.lock."
        )
    return list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


class BuildTensorFlowKernels(build_ext):
    """build_ext that takes TensorFlow's flags at build time and compiles the sources in parallel."""

    def build_extensions(self) -> None:
        compile_flags, link_flags = tensorflow_flags()
        self.extensions = check_seal(self.extensions)
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags + COMMON_COMPILE_ARGS
            ext.extra_link_args = link_flags + getattr(ext, "tfppml_extra_link_args", [])
        # Python's own CFLAGS carry C-only flags that g++ warns about.
        for flag in ("-Wstrict-prototypes",):
            if flag in self.compiler.compiler_so:
                self.compiler.compiler_so.remove(flag)
        serial_compile = self.compiler.compile
        jobs = int(os.environ.get("TFPPML_BUILD_JOBS", os.cpu_count() or 1))

        def parallel_compile(sources, *args, **kwargs):
            # One TF-header-heavy translation unit takes ~20 s; compile them side by side.
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                parts = pool.map(lambda src: serial_compile([src], *args, **kwargs), sources)
                return [obj for objs in parts for obj in objs]

        self.compiler.compile = parallel_compile
        super().build_extensions()


SOURCES = read_source_lists()

# The CKKS kernels, linked against the static SEAL; --exclude-libs keeps SEAL's symbols private to the library,
# so another SEAL in the same process (TenSEAL, Pyfhel) cannot clash with it.
HE_KERNELS = Extension(
    HE_EXTENSION,
    sources=SOURCES["TFPPML_HE_SRCS"],
    depends=SOURCES["TFPPML_HE_HDRS"] + ["cc/kernels/parallel.h"],
    include_dirs=[str(ROOT), str(SEAL_INCLUDE)],
    extra_objects=[str(SEAL_LIBRARY)],
    language="c++",
)
HE_KERNELS.tfppml_extra_link_args = ["-Wl,--exclude-libs,ALL"]

setup(
    name="tfppml",
    version="0.1.0.dev0",
    description="Privacy-preserving machine learning for TensorFlow/Keras: MPC, HE, DP and federated learning.",
    packages=find_packages(include=["tfppml", "tfppml.*"]),
    python_requires=">=3.11,<3.12",
    ext_modules=[
        Extension(
            "tfppml.ops._tfppml_ops",
            sources=SOURCES["TFPPML_OPS_SRCS"],
            depends=SOURCES["TFPPML_OPS_HDRS"],
            include_dirs=[str(ROOT)],
            language="c++",
        ),
        HE_KERNELS,
    ],
    cmdclass={"build_ext": BuildTensorFlowKernels},
    entry_points={"console_scripts": ["tfppml = tfppml.cli:main"]},
    zip_safe=False,
)
