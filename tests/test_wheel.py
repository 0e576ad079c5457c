"""The sdist and the wheel `python -m build` makes: the wheel holds the package and only the
package, the sdist what building it needs, and a wheel built from the sdist is the same wheel.

Built offline here (`--no-isolation`, with the test extra's hatchling); CI's scripts/wheel
builds them as a user does, installs the wheel in a fresh venv and runs the example app.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import fastapi_dapr

pytestmark = pytest.mark.process  # python -m build

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastapi_dapr"


def build(source: Path, out: Path, *what: str) -> list[Path]:
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", *what, "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(out.iterdir())


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    built = build(ROOT, out)  # the sdist, then the wheel built from it, as `python -m build` does
    (sdist,) = [path for path in built if path.suffix == ".gz"]
    (wheel,) = [path for path in built if path.suffix == ".whl"]
    assert sdist.name == f"fastapi_dapr-{fastapi_dapr.__version__}.tar.gz"
    assert wheel.name == f"fastapi_dapr-{fastapi_dapr.__version__}-py3-none-any.whl"
    return sdist, wheel


def package_files() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed")
    }


def test_the_wheel_holds_the_package_and_nothing_else(dist: tuple[Path, Path]) -> None:
    _, wheel = dist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"fastapi_dapr-{fastapi_dapr.__version__}.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert {name for name in names if not name.startswith(info)} == package_files()
    assert "fastapi_dapr/py.typed" in names  # the Typing :: Typed classifier's promise
    assert not [name for name in names if name.split("/")[0] in ("tests", "docs", "example_app", "bench")]
    assert "fastapi-dapr = fastapi_dapr.sidecar.cli:main" in entry_points
    assert "Provides-Extra: testing" in metadata
    assert "Requires-Dist: httpx2; extra == 'testing'" in metadata


def test_the_sdist_holds_what_building_needs_and_builds_the_same_wheel(
    dist: tuple[Path, Path], tmp_path: Path
) -> None:
    sdist, wheel = dist
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12 and later
            archive.extractall(tmp_path, filter="data")
        else:
            archive.extractall(tmp_path)
    assert {"pyproject.toml", "README.md", "PKG-INFO", "example_app/main.py"} <= names
    assert package_files() <= names
    assert not [name for name in names if name.split("/")[0] in ("tests", "docs", "bench", ".hypothesis")]
    (rebuilt,) = build(tmp_path / top, tmp_path / "out", "--wheel")
    with zipfile.ZipFile(rebuilt) as again, zipfile.ZipFile(wheel) as first:
        assert sorted(again.namelist()) == sorted(first.namelist())
