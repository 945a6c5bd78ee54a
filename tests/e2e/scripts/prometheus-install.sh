#!/usr/bin/env bash
# Installs Debian's `prometheus` package for the e2e tests that scrape a master and receive
# its remote-write, idempotently (nothing to do when it is installed). The tests start their
# own server on a free loopback port with their own configuration; the system service the
# package may start is neither needed nor in the way.
#
# Prints the path of the `prometheus` binary on stdout.
set -euo pipefail

log() { echo "prometheus-install: $*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "must run as root (or with sudo available) to apt-get install"
  SUDO=sudo
fi

if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q 'install ok installed'; then
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/murmuration"
  mkdir -p "$cache"
  # One installer at a time (several test binaries may ask at once).
  exec 9>"$cache/prometheus-install.lock"
  flock 9
  if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q 'install ok installed'; then
    log "apt-get install prometheus (log: $cache/prometheus-install.log)"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends prometheus; } >"$cache/prometheus-install.log" 2>&1 \
      || { tail -n 20 "$cache/prometheus-install.log" >&2; die "apt-get install prometheus failed"; }
  fi
fi
command -v prometheus || die "prometheus is installed but not on PATH"
