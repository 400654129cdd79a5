#!/usr/bin/env bash
# Take down the one-node SLURM cluster of tests/slurm/up.sh: cancel its jobs, stop the daemons it
# started by their PIDs (slurmd, slurmctld, and munged if up.sh started it) and restore
# /etc/slurm/slurm.conf. Safe to run twice; does nothing if up.sh did not run.
set -uo pipefail

STATE=${LANDFUSE_SLURM_STATE:-/var/lib/landfuse-slurm-test}
CONF=/etc/slurm/slurm.conf

[ "$(id -u)" = 0 ] || { echo "slurm/down.sh: needs root" >&2; exit 1; }
[ -f "$STATE/owned" ] || { echo "slurm/down.sh: no cluster of up.sh here ($STATE)"; exit 0; }

stop_pid() {  # stop_pid NAME PIDFILE EXPECTED-COMMAND
  local name=$1 pidfile=$2 comm=$3 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  # only a live process of the expected name (a stale pid file may name a recycled pid)
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm/down.sh: $name (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null
    fi
    echo "slurm/down.sh: stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

# Jobs of this cluster still queued or running (a test that timed out): cancel them by id and give
# their steps a moment to end before slurmd goes away.
if [ -s "$STATE/slurmctld.pid" ] && command -v squeue >/dev/null; then
  ids=$(timeout 10 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    timeout 10 scancel $ids 2>/dev/null || true
    for _ in $(seq 1 20); do
      [ -z "$(timeout 10 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

stop_pid slurmd "$STATE/slurmd.pid" slurmd
stop_pid slurmctld "$STATE/slurmctld.pid" slurmctld
stop_pid munged "$STATE/munged.pid" munged

if [ -e "$STATE/backup/slurm.conf" ]; then
  cp -a "$STATE/backup/slurm.conf" "$CONF"
  echo "slurm/down.sh: restored the previous $CONF"
else
  rm -f "$CONF"
  [ -e "$STATE/created-etc-slurm" ] && rmdir /etc/slurm 2>/dev/null
fi
rm -rf "$STATE"
echo "slurm/down.sh: cluster down"
