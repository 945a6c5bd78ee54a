#!/usr/bin/env bash
# Installs the Python `websockets` package (PyPI) that agent/tests/websocket.rs runs as a
# WebSocket server nobody here wrote. Idempotent: does nothing when it already imports.
#   bash tests/scripts/python-websockets.sh
set -euo pipefail

if python3 -c 'import websockets' 2>/dev/null; then
  exit 0
fi
echo "python-websockets: pip install websockets" >&2
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check 'websockets>=13' >&2 \
  || { echo "python-websockets: pip install websockets failed" >&2; exit 1; }
python3 -c 'import websockets' || { echo "python-websockets: websockets does not import after pip install" >&2; exit 1; }
