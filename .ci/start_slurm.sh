#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests/test_cluster.py (run as root).
# Installs slurm-wlm and munge from Debian, writes /etc/slurm/slurm.conf for this
# machine (all its CPUs, 90% of its memory, one partition `cpu`), starts munged,
# slurmctld and slurmd, and waits until the node is idle. No accounting database:
# job status comes from squeue (MinJobAge keeps finished jobs visible for 5 min).
# Idempotent: does nothing if the node already answers.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    echo "SLURM is already up:"; sinfo; exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

node=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # MB
# running PID_FILE: the daemon of that pid file is alive (no procps on a bare Debian)
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# munge: the package creates the key; make one if it did not
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<EOF
# written by .ci/start_slurm.sh: one node, no cgroups, no accounting
ClusterName=ci
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
ReturnToService=2
SlurmdTimeout=300
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

running /run/slurmctld.pid || slurmctld
running /run/slurmd.pid || slurmd -N "${node}"

for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in
        idle) echo "SLURM is up:"; sinfo; exit 0 ;;
        drain*|down*) scontrol update NodeName="${node}" State=RESUME || true ;;
    esac
    sleep 1
done
echo "SLURM did not come up (node state: ${state:-none}); logs:" >&2
tail -n 30 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
