"""setup.py and Bazel build the same kernels from one source list, cc/sources.bzl.

- every .cc/.h under cc/ (cc/he/ excepted: it is checked through its own lists) is listed there, once, and
  every listed file exists;
- each of setup.py's Extensions compiles exactly one *_SRCS list and depends on its *_HDRS (setup.py runs
  with setuptools.setup replaced by a recorder), and every *_SRCS list is compiled;
- //:BUILD loads its sources from //cc:sources.bzl and names no source file itself, every *_SRCS list has a
  Bazel target (or a stated reason in NOT_BUILT_BY_BAZEL), and the Bazel compile flags are setup.py's.

The checks are functions of a repository root; the last tests run them on broken copies to show they fail.
"""

from __future__ import annotations

import ast
import pathlib
import runpy
import shutil
from unittest import mock

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Target of //:BUILD -> (sources list, headers list) of cc/sources.bzl that it is built from.
BAZEL_TARGETS = {
    "_tfppml_ops.so": ("TFPPML_OPS_SRCS", "TFPPML_OPS_HDRS"),
}
# Source lists that Bazel does not build, and why.  Every other *_SRCS list needs a target above.
NOT_BUILT_BY_BAZEL = {
    "TFPPML_HE_SRCS": "the HE kernels link the SEAL that scripts/build_seal.sh builds; not in Bazel yet",
}
# Directories of cc/ whose files the coverage check leaves to their own lists.
EXCLUDED_DIRS = ("he",)
SOURCE_SUFFIXES = {".cc": "SRCS", ".h": "HDRS"}
BUILD_FILES = ("BUILD", "cc/BUILD")


def starlark_lists(path: pathlib.Path) -> dict[str, list[str]]:
    """Top-level `NAME = [...]` assignments of a .bzl file, which must be nothing but plain assignments."""
    lists: dict[str, list[str]] = {}
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # docstring
            continue
        if not (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            raise ValueError(f"{path}:{node.lineno}: only `NAME = [...]` assignments can be read by setup.py")
        lists[node.targets[0].id] = ast.literal_eval(node.value)
    return lists


def starlark_value(path: pathlib.Path, name: str):
    """The literal assigned to `name` at the top level of a Starlark file."""
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise LookupError(f"{path} assigns no {name}")


def source_list_problems(root: pathlib.Path) -> list[str]:
    """What is wrong between the files under cc/ and the lists of cc/sources.bzl (empty when all agree)."""
    lists = starlark_lists(root / "cc" / "sources.bzl")
    problems = []
    listed: dict[str, str] = {}
    for name, paths in lists.items():
        for path in paths:
            if path in listed:
                problems.append(f"{path} is listed twice ({listed[path]} and {name})")
            listed[path] = name
            if not (root / path).is_file():
                problems.append(f"{name} lists {path}, which does not exist")
            kind = SOURCE_SUFFIXES.get(pathlib.PurePosixPath(path).suffix)
            if kind and not name.endswith("_" + kind):
                problems.append(f"{path} is in {name}, not in a *_{kind} list")
    for path in sorted((root / "cc").rglob("*")):
        rel = path.relative_to(root)
        if path.suffix not in SOURCE_SUFFIXES or rel.parts[1] in EXCLUDED_DIRS:
            continue
        if rel.as_posix() not in listed:
            problems.append(
                f"{rel.as_posix()} is not listed in cc/sources.bzl: setup.py and Bazel would skip it"
            )
    return problems


def run_setup_py(root: pathlib.Path) -> tuple[dict, dict]:
    """(keywords setup.py passes to setuptools.setup, setup.py's globals), without building anything."""
    recorded: dict = {}
    with mock.patch("setuptools.setup", lambda **kwargs: recorded.update(kwargs)):
        module = runpy.run_path(str(root / "setup.py"), run_name="tfppml_setup_under_test")
    return recorded, module


def setup_py_problems(root: pathlib.Path) -> list[str]:
    """What differs between setup.py's Extensions and cc/sources.bzl, or between its flags and Bazel's."""
    lists = starlark_lists(root / "cc" / "sources.bzl")
    recorded, module = run_setup_py(root)
    problems = []
    if module["read_source_lists"]() != lists:
        problems.append("setup.py's read_source_lists() does not read cc/sources.bzl as written")
    src_lists = {name: paths for name, paths in lists.items() if name.endswith("_SRCS")}
    listed_headers = {path for name, paths in lists.items() if name.endswith("_HDRS") for path in paths}
    compiled = set()
    for ext in recorded.get("ext_modules", []):
        matches = [name for name, paths in src_lists.items() if list(ext.sources) == paths]
        if not matches:
            problems.append(
                f"setup.py's {ext.name} compiles {ext.sources}, which is no list of cc/sources.bzl"
            )
            continue
        compiled.update(matches)
        hdrs = matches[0][: -len("_SRCS")] + "_HDRS"
        missing = [path for path in lists.get(hdrs, []) if path not in ext.depends]
        if missing:
            problems.append(f"setup.py's {ext.name} does not depend on {missing} of {hdrs}")
        unlisted = [path for path in ext.depends if path not in listed_headers]
        if unlisted:
            problems.append(
                f"setup.py's {ext.name} depends on {unlisted}, which cc/sources.bzl does not list"
            )
    for name in sorted(set(src_lists) - compiled):
        problems.append(f"no Extension of setup.py compiles {name} of cc/sources.bzl")
    bazel_copts = starlark_value(root / "bazel" / "tfppml.bzl", "TFPPML_COPTS")
    if module["COMMON_COMPILE_ARGS"] != bazel_copts:
        problems.append(
            f"setup.py compiles with {module['COMMON_COMPILE_ARGS']} but bazel/tfppml.bzl with {bazel_copts}"
        )
    return problems


def bazel_problems(root: pathlib.Path) -> list[str]:
    """What is wrong with the way the BUILD files take their sources from //cc:sources.bzl."""
    problems = []
    for build_file in BUILD_FILES:
        for node in ast.walk(ast.parse((root / build_file).read_text(), filename=build_file)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if pathlib.PurePosixPath(node.value).suffix in SOURCE_SUFFIXES:
                    problems.append(f"{build_file} names {node.value!r}: take it from //cc:sources.bzl")

    tree = ast.parse((root / "BUILD").read_text(), filename="BUILD")
    calls = [
        node.value for node in tree.body if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
    ]
    loaded = set()
    targets = {}
    for call in calls:
        if isinstance(call.func, ast.Name) and call.func.id == "load" and call.args:
            if isinstance(call.args[0], ast.Constant) and call.args[0].value == "//cc:sources.bzl":
                loaded.update(arg.value for arg in call.args[1:] if isinstance(arg, ast.Constant))
        kwargs = {kw.arg: kw.value for kw in call.keywords}
        if isinstance(kwargs.get("name"), ast.Constant):
            targets[kwargs["name"].value] = kwargs

    lists = starlark_lists(root / "cc" / "sources.bzl")
    built = {srcs for srcs, _ in BAZEL_TARGETS.values()}
    for name in lists:
        if name.endswith("_SRCS") and name not in built and name not in NOT_BUILT_BY_BAZEL:
            problems.append(f"{name} of cc/sources.bzl has no Bazel target (see BAZEL_TARGETS in this test)")
    for target, (srcs, hdrs) in BAZEL_TARGETS.items():
        for name in (srcs, hdrs):
            if name not in loaded:
                problems.append(f"BUILD does not load {name} from //cc:sources.bzl")
        kwargs = targets.get(target)
        if kwargs is None:
            problems.append(f"BUILD defines no target {target}")
            continue
        for attr, name in (("srcs", srcs), ("hdrs", hdrs)):
            value = kwargs.get(attr)
            if not (isinstance(value, ast.Name) and value.id == name):
                problems.append(f"BUILD's {target} must take {attr} = {name} (from //cc:sources.bzl)")
    return problems


def test_every_kernel_source_is_listed_once():
    assert source_list_problems(ROOT) == []


def test_setup_py_builds_exactly_the_listed_sources_with_bazels_flags():
    assert setup_py_problems(ROOT) == []


def test_bazel_build_takes_its_sources_from_the_shared_list():
    assert bazel_problems(ROOT) == []


# The checks above must be able to fail: run them on broken copies of the repository's build files.


@pytest.fixture
def repo_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    for rel in ("setup.py", "BUILD", "cc", "bazel"):
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, tmp_path / rel)
        else:
            shutil.copy2(src, tmp_path / rel)
    assert source_list_problems(tmp_path) == []
    return tmp_path


def test_a_source_file_that_is_not_listed_is_reported(repo_copy):
    (repo_copy / "cc" / "kernels" / "forgotten_kernels.cc").write_text("// not in cc/sources.bzl\n")
    (repo_copy / "cc" / "he").mkdir(exist_ok=True)
    (repo_copy / "cc" / "he" / "unlisted_here.cc").write_text("// cc/he/ is checked through its own lists\n")
    problems = source_list_problems(repo_copy)
    assert len(problems) == 1 and "cc/kernels/forgotten_kernels.cc is not listed" in problems[0]


def test_a_listed_file_that_is_missing_is_reported(repo_copy):
    listed = starlark_lists(repo_copy / "cc" / "sources.bzl")["TFPPML_OPS_SRCS"][0]
    (repo_copy / listed).unlink()
    assert any(f"lists {listed}, which does not exist" in p for p in source_list_problems(repo_copy))


def test_setup_py_with_its_own_file_list_is_reported(repo_copy):
    setup_py = repo_copy / "setup.py"
    text = setup_py.read_text()
    assert 'sources=SOURCES["TFPPML_OPS_SRCS"]' in text
    setup_py.write_text(text.replace('sources=SOURCES["TFPPML_OPS_SRCS"]', 'sources=["cc/ops/ring_ops.cc"]'))
    problems = setup_py_problems(repo_copy)
    assert any("_tfppml_ops compiles ['cc/ops/ring_ops.cc'], which is no list" in p for p in problems)
    assert any("no Extension of setup.py compiles TFPPML_OPS_SRCS" in p for p in problems)


def test_different_compile_flags_are_reported(repo_copy):
    tfppml_bzl = repo_copy / "bazel" / "tfppml.bzl"
    tfppml_bzl.write_text(tfppml_bzl.read_text().replace('"-O3"', '"-O2"', 1))
    assert any("bazel/tfppml.bzl with ['-O2'" in p for p in setup_py_problems(repo_copy))


def test_build_that_lists_files_itself_is_reported(repo_copy):
    build = repo_copy / "BUILD"
    build.write_text(build.read_text().replace("srcs = TFPPML_OPS_SRCS,", 'srcs = ["cc/ops/ring_ops.cc"],'))
    problems = bazel_problems(repo_copy)
    assert any("BUILD names 'cc/ops/ring_ops.cc'" in p for p in problems)
    assert any("must take srcs = TFPPML_OPS_SRCS" in p for p in problems)


def test_a_new_source_list_without_a_bazel_target_is_reported(repo_copy):
    sources = repo_copy / "cc" / "sources.bzl"
    sources.write_text(sources.read_text() + "\nTFPPML_NEW_SRCS = []\n")
    assert any(
        "TFPPML_NEW_SRCS of cc/sources.bzl has no Bazel target" in p for p in bazel_problems(repo_copy)
    )
