#!/usr/bin/env bash
# Runs every test of Murmuration on a fresh machine, as the README says:
#   tests/run-all.sh [extra arguments of `cargo test`]
# It installs what the tests need (idempotently; slow parts are cached under
# ${MURMURATION_CACHE:-~/.cache/murmuration}), checks formatting and lints (failing fast),
# then runs the whole workspace's tests: unit tests, engine tests on loopback, and the
# end-to-end tests against a real Kubernetes control plane (etcd + kube-apiserver +
# kube-controller-manager 1.20.2 built from Debian's source package, with a test kubelet).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[run-all] %s\n' "$*" >&2; }

# The Kubernetes control plane binaries (built once, then cached) and the Helm SDK, in the
# background while cargo checks and compiles: the build waits on downloads and the linker
# as much as on the CPU. The e2e tests take the same lock, so they wait for it to finish.
cp_log="$(mktemp -t murmuration-control-plane.XXXXXX)"
bash tests/e2e/scripts/control-plane-build.sh >"$cp_log" 2>&1 &
cp_pid=$!
trap 'kill "$cp_pid" 2>/dev/null || true' EXIT

# rustfmt and clippy (a minimal rustup profile has neither).
if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
      log "installing the $component component"
      rustup component add "$component"
    fi
  done
fi

log "cargo fmt --all --check"
cargo fmt --all --check
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Compile every target once, then wait for the control plane before any test runs. The
# examples also as programs (`--all-targets` builds them as test harnesses only): the
# custom-scenario test runs the one built here.
log "cargo test --workspace --all-targets --no-run"
cargo test --workspace --all-targets --no-run "$@"
log "cargo build --workspace --examples"
cargo build --workspace --examples
if ! wait "$cp_pid"; then
  cat "$cp_log" >&2
  log "the control plane build failed"
  exit 1
fi
trap - EXIT
log "control plane ready: $(tail -n 1 "$cp_log")"
# The Python `websockets` package: the WebSocket server the agent's tests run against.
bash tests/scripts/python-websockets.sh

cargo test --workspace --all-targets --no-fail-fast "$@"
