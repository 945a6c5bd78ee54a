#!/usr/bin/env bash
# Runs every test of Murmuration on a fresh machine, as the README says:
#   tests/run-all.sh
# It installs what the tests need (idempotently; slow parts are cached under
# ${MURMURATION_CACHE:-~/.cache/murmuration}), then runs the whole workspace's tests:
# unit tests, engine tests on loopback, and the end-to-end tests against a real Kubernetes
# control plane (etcd + kube-apiserver + kube-controller-manager 1.20.2 built from Debian's
# source package, with a test kubelet).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kubernetes control plane binaries (built once, then cached) and the Helm SDK.
bash tests/e2e/scripts/control-plane-build.sh
# The Python `websockets` package: the WebSocket server the agent's tests run against.
bash tests/scripts/python-websockets.sh

cargo test --workspace --all-targets --no-fail-fast "$@"
