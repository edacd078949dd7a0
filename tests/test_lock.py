"""The locks (requirements/lock*.txt) agree with what they lock: every requirement of setup.py (install_requires and
the extras each leg installs) and of the leg's requirements/*.txt is satisfied by a pinned version in the lock, with
markers evaluated for the lock's Python. Needs neither ROS nor torch: it reads files only."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

packaging = pytest.importorskip("packaging")
from packaging.markers import default_environment  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETUP_SH = (REPO / "scripts" / "setup.sh").read_text()
# The extra no leg installs (no GPU in CI): TensorRT and pycuda come with JetPack or a CUDA machine (docs/jetson.md).
NOT_INSTALLED = {"tensorrt"}


def _legs() -> dict[str, tuple[Path, Path | None, list[str]]]:
    """leg → (lock, ROS requirements file or None, extras), read from scripts/setup.sh's case table."""
    legs = {}
    for m in re.finditer(r"^\s*(\w+)\)\s+DEF_VENV=\S+\s+DEF_EXTRAS=(\S+);\s+ROS_REQ=(\S*);\s+DEF_LOCK=(\S+) ;;", SETUP_SH, re.M):
        name, extras, ros_req, lock = m.groups()
        path = lambda s: REPO / s.replace("$ROOT/", "")  # noqa: E731
        legs[name] = (path(lock), path(ros_req) if ros_req else None, extras.split(","))
    return legs


def _setup_kwargs(monkeypatch: pytest.MonkeyPatch) -> dict:
    import setuptools

    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"))
    return captured


def _lock(path: Path) -> tuple[dict[str, Version], str]:
    text = path.read_text()
    m = re.search(r"^# python: (\d+\.\d+)", text, re.M)
    assert m, f"{path}: no '# python: X.Y' header (scripts/lock.sh writes it)"
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{path}: '{line}' is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = Version(version)
    return pins, m.group(1)


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _unsatisfied(reqs: list[Requirement], pins: dict[str, Version], python: str, extra: str = "") -> list[str]:
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0", "extra": extra}
    bad = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            bad.append(f"{req} (not in the lock)")
        elif not req.specifier.contains(pin, prereleases=True):
            bad.append(f"{req} (lock has {pin})")
    return bad


def test_setup_sh_names_every_leg() -> None:
    assert set(_legs()) == {"kilted", "jazzy", "none"}, _legs()


@pytest.mark.parametrize("leg", ["kilted", "jazzy", "none"])
def test_lock_satisfies_setup_py_and_requirements(leg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lock, ros_req, extras = _legs()[leg]
    pins, python = _lock(lock)
    kw = _setup_kwargs(monkeypatch)
    assert set(extras) <= set(kw["extras_require"]) - NOT_INSTALLED, extras
    bad = _unsatisfied([Requirement(r) for r in kw["install_requires"]], pins, python)
    for extra in extras:
        bad += _unsatisfied([Requirement(r) for r in kw["extras_require"][extra]], pins, python, extra)
    if ros_req is not None:
        bad += _unsatisfied(_requirements(ros_req), pins, python)
        # ros-rclpy, not only its ros-jazzy alias: the CMake path fix in setup.sh depends on these exact builds.
        assert "ros-rclpy" in pins
    assert not bad, f"{lock.name} does not satisfy: " + "; ".join(bad)
    assert Version(python) >= Version(kw["python_requires"].lstrip(">="))


def test_lock_check_fails_on_a_mismatch() -> None:
    """The check itself: a pin outside a specifier, or a missing package, is reported."""
    pins = {"numpy": Version("1.22.0")}
    bad = _unsatisfied([Requirement("numpy>=1.23"), Requirement("scipy>=1.8"),
                        Requirement("tensorrt>=10; python_version < '3.0'")], pins, "3.11")
    assert bad == ["numpy>=1.23 (lock has 1.22.0)", "scipy>=1.8 (not in the lock)"]


def test_locks_are_the_pip_freeze_format() -> None:
    for lock, _, _ in _legs().values():
        pins, python = _lock(lock)
        assert len(pins) > 20 and "seg-node" not in pins, lock  # --exclude-editable: the project itself is not pinned


def test_packaging_tools_are_pinned_and_agree_with_every_lock() -> None:
    """requirements/build.txt (installed first in every venv) pins exact versions that no lock contradicts."""
    tools = _requirements(REPO / "requirements" / "build.txt")
    assert {r.name for r in tools} == {"pip", "setuptools"}
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in tools), tools
    for lock, _, _ in _legs().values():
        pins, python = _lock(lock)
        assert not _unsatisfied([r for r in tools if r.name in pins], pins, python), lock
