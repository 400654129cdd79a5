#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the SLURM end-to-end test (tests/test_slurm_e2e.py).
#
#   sudo tests/slurm/up.sh      # install (if missing), configure and start; prints `sinfo`
#   sudo tests/slurm/down.sh    # stop what up.sh started (by PID) and restore /etc/slurm/slurm.conf
#
# What it does, and undoes in down.sh:
# * installs Debian's slurmctld, slurmd, slurm-client and munge with apt if slurmctld is missing
#   (a fresh CI machine has none of them; the packages stay installed);
# * starts munged if it is not running (and remembers that it did);
# * writes /etc/slurm/slurm.conf (the existing one, if any, is backed up first): one node with this
#   machine's CPU layout (as `slurmd -C` sees it) and memory, partition `debug`, no accounting, no
#   cgroups. It must be that path, not $SLURM_CONF: the job-step plugin drops SLURM_* variables
#   before its nested srun;
# * starts slurmctld and slurmd (state, spool, logs and pid files under $STATE) and waits until the
#   node is idle.
# MinJobAge=600 keeps finished jobs visible to squeue (the test cluster has no accounting, so sacct
# cannot answer: the profile's `slurm-status-command: squeue` relies on this).
# Needs root. A controller this script did not start is left alone: the script refuses to run.
set -euo pipefail

STATE=${LANDFUSE_SLURM_STATE:-/var/lib/landfuse-slurm-test}
CONF=/etc/slurm/slurm.conf
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "slurm/up.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (apt-get, /etc/slurm, munge and the SLURM daemons)"

# A previous run that was not taken down (a killed test): take it down first.
if [ -f "$STATE/owned" ]; then
  echo "slurm/up.sh: taking down the cluster left by a previous run"
  bash "$HERE/down.sh"
fi
for daemon in slurmctld slurmd; do
  if pid=$(pgrep -x "$daemon"); then
    die "$daemon is already running (pid $pid) and was not started by this script; stop it first"
  fi
done

munged_before=$(pgrep -u munge -x munged 2>/dev/null || true)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
  || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurm is not installed and there is no apt-get to install it"
  export DEBIAN_FRONTEND=noninteractive
  echo "slurm/up.sh: installing slurmctld slurmd slurm-client munge"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
# A package's postinst may have started daemons (where services are allowed to start): ours to stop.
for daemon in slurmctld slurmd; do
  if pid=$(pgrep -x "$daemon"); then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
done

install -d -m 0755 "$STATE" "$STATE/backup" "$STATE/ctld" "$STATE/spool" "$STATE/log"
: > "$STATE/owned"

# munge: the key comes with the package (its postinst creates it); create one if it is missing.
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if [ -z "$munged_before" ]; then
  pid=$(pgrep -u munge -x munged 2>/dev/null || true)
  if [ -z "$pid" ]; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    pid=$(cat /run/munge/munged.pid)
  fi
  echo "$pid" > "$STATE/munged.pid"  # started by us (or by the package install): down.sh stops it
fi
munge -n | unmunge >/dev/null || die "munge does not work"

# slurm.conf: back up a pre-existing one (down.sh puts it back).
if [ -e "$CONF" ] && [ ! -e "$STATE/backup/slurm.conf" ]; then
  cp -a "$CONF" "$STATE/backup/slurm.conf"
fi
[ -d /etc/slurm ] || { install -d -m 0755 /etc/slurm; : > "$STATE/created-etc-slurm"; }
NODE=$(hostname -s)
# The node's layout as slurmd itself detects it (CPUs, sockets, cores, threads per core): a hand-written
# `CPUs=$(nproc)` disagrees with it on a machine with hyper-threads, and a mismatch can leave a
# multi-CPU job step waiting for CPUs forever. RealMemory is ours: 1 GB below the total, for the daemons.
HW=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //; s/ ?RealMemory=[0-9]+//')
[ -n "$HW" ] || die "slurmd -C printed no node layout"
CPUS=$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$HW")
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') - 1024 ))
cat > "$CONF" <<CONF
# Written by landfuse tests/slurm/up.sh for the SLURM end-to-end test; tests/slurm/down.sh restores
# the previous file (if any). One node, one partition, no accounting, no cgroups.
ClusterName=landfuse-ci
SlurmctldHost=${NODE}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmdSpoolDir=${STATE}/spool
StateSaveLocation=${STATE}/ctld
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
NodeName=${NODE} NodeAddr=127.0.0.1 ${HW} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
CONF

# -c: start without the job state of an earlier test cluster
slurmctld -c
slurmd
st=
for _ in $(seq 1 60); do
  st=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
  [ "$st" = idle ] && break
  sleep 1
done
sinfo
if [ "$st" != idle ]; then
  tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  die "the node did not become idle (state: ${st:-unknown})"
fi
echo "slurm/up.sh: cluster up (node $NODE, $CPUS CPUs, ${MEM} MB; state in $STATE)"
