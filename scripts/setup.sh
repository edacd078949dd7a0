#!/usr/bin/env bash
# One command for a fresh machine with Python >= 3.10 and no ROS: creates .venv/, installs pinned ROS 2 Kilted
# wheels, builds seg_msgs into the venv, then installs seg_node with its runtime, training and test extras.
# Every pip step is constrained by a lock (requirements/lock*.txt), and the venv is checked against it afterwards
# (constraints pin only what they list), so a fresh machine installs exactly what CI tested.
# Idempotent: a second run skips what is already in place (seg_msgs rebuilds only when its sources change).
#
#   bash scripts/setup.sh [kilted|jazzy|none] [VENV]
#     kilted (default)  .venv/        ROS 2 Kilted wheels + extras train,onnx,eval,test    lock: requirements/lock.txt
#     jazzy             .venv-jazzy/  ROS 2 Jazzy wheels (run it on Python 3.12, as Ubuntu 24.04 does) + onnx,eval,test
#                                     lock: requirements/lock-jazzy.txt
#     none              .venv-py310/  no ROS: the runtime and its tests on Humble's Python 3.10 (PYTHON=python3.10)
#                                     + onnx,eval,test                                      lock: requirements/lock-py310.txt
#   Environment: PYTHON (interpreter for a new venv), SEG_NODE_EXTRAS, SEG_NODE_LOCK (a lock file, or "none" to
#   resolve the newest versions, which is what scripts/lock.sh does).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISTRO=${1:-${SEG_NODE_ROS_DISTRO:-kilted}}
case "$DISTRO" in
  kilted) DEF_VENV=$ROOT/.venv;       DEF_EXTRAS=train,onnx,eval,test; ROS_REQ=$ROOT/requirements/ros.txt;       DEF_LOCK=$ROOT/requirements/lock.txt ;;
  jazzy)  DEF_VENV=$ROOT/.venv-jazzy; DEF_EXTRAS=onnx,eval,test;       ROS_REQ=$ROOT/requirements/ros-jazzy.txt; DEF_LOCK=$ROOT/requirements/lock-jazzy.txt ;;
  none)   DEF_VENV=$ROOT/.venv-py310; DEF_EXTRAS=onnx,eval,test;       ROS_REQ=;                                  DEF_LOCK=$ROOT/requirements/lock-py310.txt ;;
  *) echo "unknown ROS distribution '$DISTRO': use kilted, jazzy or none" >&2; exit 2 ;;
esac
VENV=${2:-${VENV:-$DEF_VENV}}
PYTHON=${PYTHON:-python3}
EXTRAS=${SEG_NODE_EXTRAS:-$DEF_EXTRAS}
LOCK=${SEG_NODE_LOCK:-$DEF_LOCK}
step() { printf '\n== %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
CONSTRAINTS=()
if [ "$LOCK" != none ]; then
  [ -f "$LOCK" ] || { echo "lock file $LOCK not found (scripts/lock.sh writes it)" >&2; exit 2; }
  LOCK_PY=$(sed -n 's/^# python: \([0-9]*\.[0-9]*\).*/\1/p' "$LOCK" | head -n 1)
  VENV_PY=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -n "$LOCK_PY" ] && [ "$LOCK_PY" != "$VENV_PY" ]; then
    echo "warning: $LOCK was made on Python $LOCK_PY, $VENV has Python $VENV_PY: pins may not resolve" >&2
  fi
  CONSTRAINTS=(-c "$LOCK")
  echo "pip constraints: $LOCK"
fi
# Some machines list local package mirrors that do not carry every project; pip warns once per package.
pip_install() { "${PIP[@]}" install "${CONSTRAINTS[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

step "packaging tools (requirements/build.txt)"
pip_install -r "$ROOT/requirements/build.txt"

if [ -n "$ROS_REQ" ]; then
step "ROS 2 $DISTRO wheels (pinned: the CMake path fix below depends on these builds)"
pip_install -r "$ROS_REQ"

# The wheels' exported CMake targets point at the manylinux build interpreter; see docs/design.md, 'ROS 2 without ROS tooling'.
PYINC=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NPINC=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
{ grep -rl '/opt/python/cp3' "$VENV/share" --include='*.cmake' || true; } | xargs -r sed -i -E \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_?core/include#$NPINC#g"

SRC="$ROOT/seg_msgs"
BUILD="$VENV/.build/seg_msgs"
STAMP="$BUILD/.sources.sha256"
HASH=$(cd "$SRC" && find . -type f -not -path './build*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && "$VENV/bin/python" -c "import seg_msgs.msg" 2>/dev/null; then
  step "seg_msgs up to date"
else
  step "building seg_msgs into $VENV (log: $BUILD.log)"
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  if ! { AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" cmake -S "$SRC" -B "$BUILD" \
           -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
         && PATH="$VENV/bin:$PATH" cmake --build "$BUILD" -j"$(nproc)" \
         && cmake --install "$BUILD"; } >"$BUILD.log" 2>&1; then
    tail -n 40 "$BUILD.log"; echo "seg_msgs build failed; full log: $BUILD.log" >&2; exit 1
  fi
  echo "$HASH" >"$STAMP"
fi

fi

step "seg_node[$EXTRAS] (editable)"
# torch 2.13.0 is pinned so pip takes the local CPU build instead of the CUDA one from the index.
pip_install -e "$ROOT[$EXTRAS]"

if [ "$LOCK" != none ]; then
  # A constraints file pins only the packages it lists: a dependency missing from it would come in at whatever
  # version is newest today. Fail naming any installed package that the lock (or build.txt, for pip and
  # setuptools, which pip freeze leaves out) does not pin to the installed version.
  step "checking the venv against $LOCK"
  "$VENV/bin/python" - "$LOCK" "$ROOT/requirements/build.txt" <<'PY'
import re, sys
from importlib.metadata import distributions
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins = {}
for path in sys.argv[1:]:
    for line in open(path):
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==", 1)
            pins[norm(name)] = version
drift = sorted(f"{d.metadata['Name']} {d.version} (lock: {pins.get(norm(d.metadata['Name']), 'not listed')})"
               for d in distributions()
               if norm(d.metadata["Name"]) != "seg-node" and pins.get(norm(d.metadata["Name"])) != d.version)
if drift:
    sys.exit(f"installed packages that {sys.argv[1]} does not pin (refresh it with scripts/lock.sh):\n  "
             + "\n  ".join(drift))
print(f"all {len(pins)} pins match")
PY
fi

if [ -n "$ROS_REQ" ]; then CHECK="import seg_msgs.msg, rclpy, seg_node"; else CHECK="import seg_node"; fi
"$VENV/bin/python" -c "$CHECK; print('seg_node', seg_node.__version__, 'ready in', '$VENV', '($DISTRO)')"
