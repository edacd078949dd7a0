#!/usr/bin/env bash
# Refresh a lock: a fresh temporary venv, scripts/setup.sh with no constraints (pip takes the newest versions that
# setup.py and requirements/*.txt allow), then `pip freeze --exclude-editable` into the lock file.
#   bash scripts/lock.sh [kilted|jazzy|none]      (same legs and PYTHON as scripts/setup.sh)
# After a refresh run the legs' tests (.ci/run) before committing the new lock.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISTRO=${1:-kilted}
case "$DISTRO" in
  kilted) OUT=$ROOT/requirements/lock.txt ;;
  jazzy)  OUT=$ROOT/requirements/lock-jazzy.txt ;;
  none)   OUT=$ROOT/requirements/lock-py310.txt ;;
  *) echo "unknown leg '$DISTRO': use kilted, jazzy or none" >&2; exit 2 ;;
esac
TMP=$(mktemp -d -t seg_node_lock.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
echo "== resolving the newest allowed versions in a fresh venv $TMP/venv"
SEG_NODE_LOCK=none bash "$ROOT/scripts/setup.sh" "$DISTRO" "$TMP/venv"
PYV=$("$TMP/venv/bin/python" -c 'import platform; print(platform.python_version())')
{
  echo "# python: $PYV, ros: $DISTRO, $(uname -m). Written by scripts/lock.sh $DISTRO on $(date -u +%Y-%m-%d); do not edit by hand."
  echo "# Used as pip constraints (-c) by scripts/setup.sh $DISTRO; tests/test_lock.py checks it against setup.py."
  "$TMP/venv/bin/python" -m pip --disable-pip-version-check freeze --exclude-editable | LC_ALL=C sort -f
} >"$OUT"
echo "== wrote $OUT ($(grep -vc '^#' "$OUT") packages, Python $PYV)"
