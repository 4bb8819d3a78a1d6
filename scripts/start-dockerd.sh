#!/usr/bin/env bash
# Makes sure a Docker daemon answers on this machine: when `docker info` fails and we are root with
# Debian's dockerd installed, starts one in the background (log: ${DOCKERD_LOG:-/tmp/dockerd.log})
# and waits for it. Prints the started daemon's pid on stdout (nothing when one was already
# running), so a caller that started it can stop it again. Exit 0 when a daemon answers, 1 with one
# line on stderr saying why not (no docker CLI, no dockerd, not root, or it did not come up).
set -u
say() { echo "start-dockerd: $*" >&2; }
command -v docker >/dev/null 2>&1 || { say "no docker CLI (apt-get install docker.io)"; exit 1; }
docker info >/dev/null 2>&1 && exit 0
DOCKERD=$(command -v dockerd || ls /usr/sbin/dockerd 2>/dev/null || true)
[ -n "$DOCKERD" ] || { say "no dockerd (apt-get install docker.io)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { say "not root: cannot start dockerd"; exit 1; }
log=${DOCKERD_LOG:-/tmp/dockerd.log}
# Its own session, so the daemon outlives the shell that started it and a Ctrl-C there.
setsid "$DOCKERD" >"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "$pid"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    why=$(grep -E 'level=(error|fatal)|^failed' "$log" | tail -1 | cut -c1-300)
    say "dockerd exited: ${why:-$(tail -1 "$log" | cut -c1-300)} (log: $log)"
    exit 1
  fi
  sleep 0.5
done
say "dockerd did not answer within 30 s (log: $log)"
kill "$pid" 2>/dev/null
exit 1
