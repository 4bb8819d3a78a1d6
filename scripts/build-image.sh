#!/usr/bin/env bash
# Builds the harness image `llm-load-harness:VERSION` and `:dev` (what `make image` runs).
#
# Base image: $BASE_IMAGE when set; else python:3.11-slim when it is here or can be pulled; else a
# Debian bookworm base made on this machine with debootstrap (`llm-load-harness-base:bookworm`,
# made once, ~30 s), for machines with no image registry. The Dockerfile installs Python 3.11 with
# apt on a base that lacks it.
#
# Python packages: when this machine's Python is 3.11 (the image's), the dependencies are fetched
# here into a wheelhouse (deploy/wheels/, git-ignored) with this machine's pip configuration (its
# local indexes and wheel caches), and the image installs from it with --no-index: the build needs
# no Python index at all. Otherwise (or with HARNESS_WHEELHOUSE=0) pip inside the build uses PyPI
# with this machine's index URLs and CA bundle, or $PIP_ARGS (e.g. "--index-url https://mirror/simple").
#
# Builds use the host network (`docker build --network host`): apt and pip inside the build reach
# what this machine reaches, and a daemon started without a bridge still builds.
# Exit 2 (one line on stderr) when a prerequisite is missing here: no Docker daemon can be had, or
# no registry base and no debootstrap. Any other failure exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "build-image: $*" >&2; }

IMAGE=${IMAGE:-llm-load-harness}
LOCAL_BASE=${LOCAL_BASE:-llm-load-harness-base:bookworm}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

bash scripts/start-dockerd.sh >/dev/null || { say "no Docker daemon: cannot build"; exit 2; }

debian_mirror() {
  # The Debian mirror apt already uses (deb822 sources first, then the one-line format).
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
    | grep -v -- '-security' | grep -m1 '/debian/\?$' || true)
  [ -n "$m" ] || m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '{print $2}' | grep -v -- '-security' | grep -m1 '/debian/\?$' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

make_local_base() {
  command -v debootstrap >/dev/null 2>&1 || { say "no registry base and no debootstrap (apt-get install debootstrap)"; exit 2; }
  local dir mirror
  mirror=$(debian_mirror)
  dir=$(mktemp -d /tmp/harness-base.XXXXXX)
  trap 'rm -rf "$dir"' RETURN
  say "making $LOCAL_BASE with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1 \
    || { say "debootstrap failed: $(tail -1 "$dir.log") (log: $dir.log)"; exit 1; }
  rm -f "$dir.log"
  # What a registry's slim base leaves out too: downloaded packages, package lists, docs.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* \
    "$dir"/usr/share/man/* "$dir"/usr/share/locale/* "$dir"/var/log/*
  tar -C "$dir" -c . | docker import -c 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
}

if [ -z "${BASE_IMAGE:-}" ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 \
    || timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim
  else
    docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 || make_local_base
    BASE_IMAGE=$LOCAL_BASE
  fi
fi

# pip inside the build gets this machine's pip settings that mean something there: http(s)
# indexes, trusted hosts and the CA bundle (a TLS-inspecting proxy's CA, say); local folders are
# left out. They reach only the builder stage (deploy/wheels/, git-ignored), never the image.
rm -f deploy/wheels/*.whl deploy/wheels/pip.conf deploy/wheels/ca.crt
"$PY" - <<'PYCONF'
import ast, shutil, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf: dict[str, str] = {}
for line in out.splitlines():  # "global.cert='/etc/ssl/...'"; environment (":env:.") wins
    key, _, value = line.partition("=")
    name = key.rsplit(".", 1)[-1]
    if not value or (name in conf and not key.startswith(":env:")):
        continue
    try:
        conf[name] = str(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        conf[name] = value
keep = []
for name in ("index-url", "extra-index-url"):
    urls = [u for u in conf.get(name, "").split() if u.startswith(("http://", "https://"))]
    if urls:
        keep.append(f"{name} = {' '.join(urls)}")
if conf.get("trusted-host"):
    keep.append(f"trusted-host = {conf['trusted-host']}")
if conf.get("cert"):
    try:
        shutil.copyfile(conf["cert"], "deploy/wheels/ca.crt")
        keep.append("cert = /wheels/ca.crt")
    except OSError:
        pass
with open("deploy/wheels/pip.conf", "w") as fh:
    fh.write("[global]\n" + "".join(line + "\n" for line in keep))
PYCONF

# The wheelhouse: every dependency as a wheel, plus the build backend for the project itself.
if [ "${HARNESS_WHEELHOUSE:-1}" != 0 ] && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  reqs=$(mktemp)
  "$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >"$reqs"
  echo 'setuptools>=68' >>"$reqs"
  echo 'wheel' >>"$reqs"
  say "wheelhouse: pip wheel (this machine's pip configuration)"
  # Its output (warnings about this machine's index folders included) only when it fails.
  if ! "$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir deploy/wheels -r "$reqs" >"$reqs.log" 2>&1; then
    say "pip wheel failed ($(grep -m1 -E '^ERROR' "$reqs.log")): building with pip inside the image instead"
    rm -f deploy/wheels/*.whl
  fi
  rm -f "$reqs" "$reqs.log"
fi

say "building $IMAGE:$VERSION and $IMAGE:dev on $BASE_IMAGE"
start=$(date +%s)
docker build --force-rm --network host --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_ARGS="${PIP_ARGS:-}" \
  -f deploy/Dockerfile -t "$IMAGE:$VERSION" -t "$IMAGE:dev" ${DOCKER_BUILD_ARGS:-} .
# A rebuild leaves the previous image untagged (its virtualenv layer alone is ~570 MB): remove those.
# Only images of this Dockerfile's last stage carry its label, so the builder's cache stays.
docker image prune -f --filter label=org.opencontainers.image.title=llm-load-harness >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$IMAGE:dev")
say "built $IMAGE:$VERSION in $(($(date +%s) - start)) s, $((size / 1000000)) MB"
