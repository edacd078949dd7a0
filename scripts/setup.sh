#!/usr/bin/env bash
# One command for a fresh machine with Python >= 3.10 and no ROS: creates .venv/, installs pinned ROS 2 Kilted
# wheels, builds seg_msgs into the venv, then installs seg_node with its runtime, training and test extras.
# Idempotent: a second run skips what is already in place (seg_msgs rebuilds only when its sources change).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${SEG_NODE_EXTRAS:-train,onnx,eval,test}
step() { printf '\n== %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# Some machines list local package mirrors that do not carry every project; pip warns once per package.
pip_install() { "${PIP[@]}" install "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

step "ROS 2 Kilted wheels (pinned: the CMake path fix below depends on these builds)"
pip_install -r "$ROOT/requirements/ros.txt"

# The wheels' exported CMake targets point at the manylinux build interpreter; see shared/reference/ros_toolchain.md §2.
PYINC=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NPINC=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
{ grep -rl '/opt/python/cp3' "$VENV/share" --include='*.cmake' || true; } | xargs -r sed -i -E \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g"

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

step "seg_node[$EXTRAS] (editable)"
# torch 2.13.0 is pinned so pip takes the local CPU build instead of the CUDA one from the index.
pip_install -e "$ROOT[$EXTRAS]"

"$VENV/bin/python" -c "import seg_msgs.msg, seg_node; print('seg_node', seg_node.__version__, 'ready in', '$VENV')"
