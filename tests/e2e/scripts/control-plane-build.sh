#!/usr/bin/env bash
# Installs and builds what the end-to-end tests' Kubernetes control plane needs:
#   - Debian packages: etcd-server (etcd 3.4), golang-go, rsync, the reflect2 v1.0.2 sources;
#   - kube-apiserver and kube-controller-manager v1.20.2, built from Debian bookworm's
#     `kubernetes` source package with Debian's Go and one patch (see PATCH_RECIPE);
#   - Debian's kubectl 1.20 (kubernetes-client), extracted next to them (not installed
#     system-wide, so an existing, newer kubectl is left alone);
#   - the Helm SDK for Python (PyPI helm-python-sdk).
#
# Idempotent: the binaries are cached outside the work tree in
#   ${MURMURATION_CACHE:-$HOME/.cache/murmuration}/k8s-<version>-<patch hash>/
# and everything is skipped when they (and the packages) are already there. Concurrent
# runs are serialised by a file lock in the cache dir, so two test binaries never build
# twice. The first build takes about 5 minutes on 2 cores.
#
# Prints the cache dir as its last line of stdout (progress goes to stderr).
#
# Options (environment):
#   MURMURATION_CACHE       cache root (default ~/.cache/murmuration)
#   MURMURATION_SKIP_HELM=1 do not install helm-python-sdk
#   MURMURATION_KEEP_BUILD=1 keep the unpacked source tree after a successful build
set -euo pipefail

# The upstream tarball of bookworm's `kubernetes` source package the recipe was checked with
# (Debian source 1.20.5+really1.20.2-1.1+deb12u1). Only the .orig tarball is used, not
# Debian's patches, so a new Debian revision of the same tarball keeps the cache key.
K8S_ORIG_VERSION="1.20.5+really1.20.2"
# Everything that changes the binaries besides the source version goes in here, so that a
# change of recipe gives a new cache key.
PATCH_RECIPE="vendor/github.com/modern-go/reflect2 := debian golang-github-modern-go-reflect2-dev 1.0.2 (go.mod dropped); GOPATH mode; CGO_ENABLED=0; WHAT=cmd/kube-apiserver cmd/kube-controller-manager; kubectl from kubernetes-client .deb"
PATCH_HASH="$(printf '%s' "$PATCH_RECIPE" | sha256sum | cut -c1-12)"
KEY="${K8S_ORIG_VERSION}-${PATCH_HASH}"

CACHE_ROOT="${MURMURATION_CACHE:-$HOME/.cache/murmuration}"
OUT="$CACHE_ROOT/k8s-$KEY"
BINARIES=(kube-apiserver kube-controller-manager)

log() { printf '[control-plane-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "must run as root (or with sudo available) to apt-get install"
  SUDO="sudo"
fi

binaries_cached() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done
  [ -f "$OUT/.complete" ]
}
packages_present() {
  command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]
}
helm_present() {
  [ "${MURMURATION_SKIP_HELM:-0}" = 1 ] || python3 -c 'import helm_python' >/dev/null 2>&1
}

# Fast path: nothing to do, no lock, no network.
if binaries_cached && packages_present && helm_present; then
  printf '%s\n' "$OUT"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.control-plane-build.lock"
if ! flock -n 9; then
  log "another build holds $CACHE_ROOT/.control-plane-build.lock; waiting for it"
  flock 9
fi

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq >&2 || die "apt-get update failed"
    APT_UPDATED=1
  fi
}

ensure_deb_src() {
  # deb-src for bookworm and bookworm-updates (main); left alone when already there.
  if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/ \
     && apt-cache showsrc kubernetes >/dev/null 2>&1 \
     && [ -n "$(apt-cache showsrc kubernetes 2>/dev/null)" ]; then
    return 0
  fi
  local f=/etc/apt/sources.list.d/murmuration-deb-src.sources
  if [ ! -f "$f" ]; then
    log "adding deb-src for bookworm and bookworm-updates in $f"
    $SUDO tee "$f" >/dev/null <<'SRC'
# Added by murmuration tests/e2e/scripts/control-plane-build.sh: sources for `apt-get source kubernetes`.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    APT_UPDATED=0
  fi
}

ensure_packages() {
  local want=(golang-go rsync etcd-server golang-github-modern-go-reflect2-dev) missing=() p
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "apt-get install ${missing[*]} (log: $CACHE_ROOT/apt-install.log)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >"$CACHE_ROOT/apt-install.log" 2>&1 \
      || { tail -n 20 "$CACHE_ROOT/apt-install.log" >&2; die "apt-get install ${missing[*]} failed"; }
  fi
  # etcd-server starts a system etcd on 127.0.0.1:2379 through its service; the tests start
  # their own on free ports, so a system one is neither needed nor in the way.
}

ensure_helm() {
  helm_present && return 0
  log "pip install helm-python-sdk"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check helm-python-sdk >&2 \
    || die "pip install helm-python-sdk failed"
  python3 -c 'import helm_python' || die "helm_python does not import after pip install"
}

build_binaries() {
  local work="$CACHE_ROOT/build-$KEY"
  local start=$SECONDS
  rm -rf "$work"
  mkdir -p "$work"
  cd "$work"

  ensure_deb_src
  apt_update_once
  log "apt-get source --download-only kubernetes (about 34 MB)"
  # (apt warns that it downloads unsandboxed as root into this dir: harmless.)
  if ! apt-get source --download-only -qq kubernetes >"$work/apt-source.log" 2>&1; then
    cat "$work/apt-source.log" >&2
    die "apt-get source kubernetes failed"
  fi
  local dsc
  dsc="$(ls kubernetes_*.dsc 2>/dev/null | head -n1)"
  [ -n "$dsc" ] || die "no kubernetes_*.dsc downloaded in $work"
  local got="${dsc#kubernetes_}"; got="${got%.dsc}"
  local orig="kubernetes_${K8S_ORIG_VERSION}.orig.tar.gz"
  [ -f "$orig" ] || die "apt gave kubernetes $got without $orig; this script's recipe was checked with that tarball: check the build with the new one and update K8S_ORIG_VERSION"

  log "unpacking $orig"
  mkdir -p src
  tar -xzf "$orig" -C src --strip-components=1
  local tree="$work/src"
  [ -d "$tree/vendor/github.com/modern-go/reflect2" ] || die "unexpected tree: no vendor/github.com/modern-go/reflect2"

  log "patch: vendor/github.com/modern-go/reflect2 <- Debian's v1.0.2"
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$r2" ] || die "$r2 missing (golang-github-modern-go-reflect2-dev)"
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  rsync -a --exclude 'go.mod' --exclude 'go.sum' "$r2/" "$tree/vendor/github.com/modern-go/reflect2/"
  find "$tree/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete

  mkdir -p "$work/.go/src/k8s.io"
  ln -sfn "$tree" "$work/.go/src/k8s.io/kubernetes"
  log "building kube-apiserver and kube-controller-manager with $(go version) (about 5 min on 2 cores)"
  (
    cd "$work/.go/src/k8s.io/kubernetes"
    export GOPATH="$work/.go" GO111MODULE=off CGO_ENABLED=0 GOFLAGS="" GOCACHE="$work/.gocache"
    # Debian's tarball has no .git: give the version stamp explicitly.
    export KUBE_GIT_VERSION="v1.20.2" KUBE_GIT_TREE_STATE=clean
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
  ) >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "build failed; full log: $work/build.log"; }

  local staged="$OUT.tmp.$$"
  rm -rf "$staged"; mkdir -p "$staged"
  local b found
  for b in "${BINARIES[@]}"; do
    found="$(find "$tree/_output" -type f -name "$b" -perm -u+x 2>/dev/null | head -n1)"
    [ -n "$found" ] || die "$b not found under $tree/_output after the build (log: $work/build.log)"
    cp "$found" "$staged/$b"
  done

  # Debian's kubectl 1.20 (matching version), extracted only, not installed.
  apt_update_once
  if (cd "$work" && apt-get download -qq kubernetes-client >&2 2>/dev/null); then
    local deb; deb="$(ls "$work"/kubernetes-client_*.deb | head -n1)"
    mkdir -p "$work/kc" && dpkg-deb -x "$deb" "$work/kc"
    if [ -x "$work/kc/usr/bin/kubectl" ]; then cp "$work/kc/usr/bin/kubectl" "$staged/kubectl"; fi
  else
    log "kubernetes-client not available from apt; the tests will use the kubectl on PATH"
  fi

  printf '%s\n' "$PATCH_RECIPE" >"$staged/RECIPE"
  printf 'debian-source=%s\nbuilt=%s\nseconds=%s\n' "$got" "$(date -u +%FT%TZ)" "$((SECONDS - start))" >"$staged/BUILD-INFO"
  touch "$staged/.complete"
  rm -rf "$OUT"
  mv "$staged" "$OUT"
  log "built in $((SECONDS - start)) s; cached in $OUT"

  cd "$CACHE_ROOT"
  if [ "${MURMURATION_KEEP_BUILD:-0}" != 1 ]; then
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
  fi
}

ensure_packages
ensure_helm
if binaries_cached; then
  log "binaries already cached in $OUT"
else
  build_binaries
fi
printf '%s\n' "$OUT"
