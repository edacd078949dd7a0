#!/usr/bin/env bash
# The test command (README, CI). Extra arguments go to pytest, e.g. scripts/test.sh -k codec.
# SEG_NODE_VENV picks another leg's venv (scripts/setup.sh jazzy|none), e.g. SEG_NODE_VENV=.venv-jazzy scripts/test.sh -m ros.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${SEG_NODE_VENV:-$ROOT/.venv}
# DDS must never leave loopback; each ROS test picks its own domain on top of this.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
export ROS_LOG_DIR=${ROS_LOG_DIR:-$(mktemp -d -t seg_node_roslog.XXXXXX)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Lint first: a quick failure, and CI runs this script on every leg.
"$VENV/bin/ruff" check "$ROOT"
echo "pytest with $("$VENV/bin/python" --version) from $VENV" >&2
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
