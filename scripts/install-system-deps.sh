#!/usr/bin/env bash
# Installs the Debian packages the test-suite uses, when missing: strace, chromium, and for the
# container tests (tests/test_containers.py) docker.io, docker-compose and debootstrap.
# Needs root (or sudo) and apt; without them it says what is missing and the tests that need
# those tools skip with a reason. The container tests start dockerd themselves.
set -u
need=()
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Debian's docker.io (daemon and CLI); a docker CLI from elsewhere does not bring a daemon.
[ -x /usr/sbin/dockerd ] || command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
# Compose v1 is what Debian bookworm has; `docker compose` (v2) is used instead when present.
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-system-deps: not root; missing ${need[*]} (tests needing them will skip)" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: no apt-get; missing ${need[*]} (tests needing them will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "install-system-deps: apt-get could not install ${need[*]}" >&2
exit 0
