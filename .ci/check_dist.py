"""Checks the sdist and the wheel that `make package` built into DIST.

Usage: python .ci/check_dist.py DIST

- The wheel holds every file of `keras_seqnorm/` in this checkout and
  nothing else but its `.dist-info` (which holds the LICENSE).
- The sdist holds the same files, `pyproject.toml`, `README.md`, `LICENSE`
  and `CHANGELOG.md`, and no tests, benchmarks, docs or examples (they live
  in the repository).
- The wheel, installed with `pip --no-deps --target` into an empty folder
  and run from another, imports from that folder (every module, none from
  this checkout or an editable install), reports the version of its
  metadata, finds its core requirements installed, runs a layer, and its
  console script answers `--help`. Its dependencies come from the running
  environment, so the check needs no download.

Exits with status 1 and a line per problem when one fails.
"""

import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SDIST_EXTRAS = {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"}
# What setuptools adds to every sdist it builds from this checkout.
SDIST_BUILD_FILES = {"PKG-INFO", "setup.cfg", "MANIFEST.in"}

IMPORT_CHECK = """
import importlib.metadata
import pathlib
import sys

import numpy as np
from packaging.requirements import Requirement

import keras_seqnorm

target = pathlib.Path(sys.argv[1]).resolve()
where = pathlib.Path(keras_seqnorm.__file__).resolve().parent
dist = importlib.metadata.distribution("keras-seqnorm")
assert dist.version == keras_seqnorm.__version__, (
    dist.version, keras_seqnorm.__version__)
for line in dist.requires:
    requirement = Requirement(line)
    if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
        continue
    installed = importlib.metadata.version(requirement.name)
    assert requirement.specifier.contains(installed), (line, installed)
layer = keras_seqnorm.SequentialNormalization(groups_c=2, groups_m=2)
out = np.asarray(layer(np.random.default_rng(0).normal(size=(4, 3, 4))))
assert out.shape == (4, 3, 4) and np.isfinite(out).all()
# An editable install of the checkout would fill in what the wheel lacks.
elsewhere = sorted(
    name for name, module in sys.modules.items()
    if name.split(".")[0] == "keras_seqnorm"
    and target not in pathlib.Path(module.__file__).resolve().parents
)
assert not elsewhere, f"imported from outside {target}: {elsewhere}"
print(f"keras-seqnorm {dist.version} imports from {where}")
"""


def package_files():
    package = ROOT / "keras_seqnorm"
    return {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def one(paths, pattern):
    found = sorted(paths.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"expected one {pattern} in {paths}, found {found}")
    return found[0]


def check_wheel(wheel, expected):
    names = set(zipfile.ZipFile(wheel).namelist())
    info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    problems = [f"wheel lacks {n}" for n in sorted(expected - names)]
    problems += [
        f"wheel holds {n}, not in keras_seqnorm/"
        for n in sorted(names - info - expected)
    ]
    if not any(n.endswith("/licenses/LICENSE") for n in info):
        problems.append("wheel lacks .dist-info/licenses/LICENSE")
    return problems


def check_sdist(sdist, expected):
    with tarfile.open(sdist) as archive:
        names = {
            m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()
        }
    build_files = {
        n for n in names
        if n in SDIST_BUILD_FILES or n.startswith("keras_seqnorm.egg-info/")
    }
    wanted = expected | SDIST_EXTRAS
    problems = [f"sdist lacks {n}" for n in sorted(wanted - names)]
    problems += [
        f"sdist holds {n}" for n in sorted(names - build_files - wanted)
    ]
    return problems


def check_install(wheel):
    with tempfile.TemporaryDirectory() as tmp:
        target, elsewhere = pathlib.Path(tmp, "site"), pathlib.Path(tmp, "cwd")
        elsewhere.mkdir()
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-index", "--target", str(target), str(wheel)],
            check=True,
        )
        env = {**os.environ, "PYTHONPATH": str(target)}
        env.setdefault("KERAS_BACKEND", "jax")
        runs = [
            [sys.executable, "-c", IMPORT_CHECK, str(target)],
            [sys.executable, str(target / "bin" / "keras-seqnorm"), "--help"],
        ]
        problems = []
        for command in runs:
            result = subprocess.run(
                command, cwd=elsewhere, env=env, capture_output=True,
                text=True, timeout=300,
            )
            if result.returncode:
                problems.append(
                    f"{' '.join(command[:2])} failed: {result.stderr[-2000:]}"
                )
            elif command[-1] != "--help":
                print(result.stdout.strip())
        return problems


def main(dist):
    dist = pathlib.Path(dist)
    expected = package_files()
    wheel = one(dist, "keras_seqnorm-*.whl")
    sdist = one(dist, "keras_seqnorm-*.tar.gz")
    problems = check_wheel(wheel, expected) + check_sdist(sdist, expected)
    problems += check_install(wheel)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{wheel.name} and {sdist.name}: contents and install checked")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
