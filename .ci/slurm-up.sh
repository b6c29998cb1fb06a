#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine for the sweep's slurm tests: Debian's slurm-wlm and munge,
# configured for localhost and started without systemd (slurmctld + slurmd as root). Idempotent: when the
# cluster already answers, it only says so. Needs root and apt-get. `.ci/slurm-up.sh --stop` stops the daemons.
set -euo pipefail

say() { echo "slurm-up: $*"; }
if [ "$(id -u)" != 0 ]; then say "needs root (it installs Debian packages and starts daemons)"; exit 2; fi
if [ "${1:-}" = "--stop" ]; then
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  say "stopped"
  exit 0
fi
if command -v sinfo >/dev/null && timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  say "already up: $(sinfo -h -o '%P %D %T' | head -1)"
  exit 0
fi

start=$(date +%s)
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || \
    { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi

# munge: a key of our own, then the daemon (it refuses keys or folders with loose permissions)
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi

# slurm.conf: one node (this machine, all its CPUs, 90% of its memory), one default partition
host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
# written by sr2lora's .ci/slurm-up.sh: a one-node test cluster on localhost
ClusterName=sr2lora-test
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# no systemd, no cgroups in the sandbox: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
# a node that rebooted or lost its daemon comes back by itself
ReturnToService=2
# finished jobs stay visible to scontrol for 10 minutes (sr2lora sweep --status reads their state there)
MinJobAge=600
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 60); do
  if timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    say "up in $(( $(date +%s) - start ))s: $(sinfo -h -o 'partition %P, %D node, %c CPUs, %T')"
    exit 0
  fi
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
say "the cluster did not come up; logs: /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log"
tail -n 5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log 2>/dev/null || true
exit 1
