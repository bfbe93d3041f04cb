#!/usr/bin/env bash
# A real single-node Slurm on this machine, from Debian's packages, for trying
# the workflow's Slurm profile: `scripts/slurm-local.sh start` installs (once),
# configures and starts munged, slurmctld and slurmd; `stop` stops them.
# Needs root and Debian's package archive. No systemd: the daemons are started
# directly and stopped by their PIDs.
set -euo pipefail

STATE=/run/steelflow-slurm
CONF=/etc/slurm/slurm.conf

start() {
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        echo "installing slurmctld slurmd slurm-client munge from Debian's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    fi
    mkdir -p "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
    chown munge:munge /run/munge 2>/dev/null || true
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --force 2>/dev/null || create-munge-key -f
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    local cpus memory
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat > "$CONF" <<EOF
# written by steelflow's scripts/slurm-local.sh
ClusterName=steelflow
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge=300
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    pgrep -x munged >/dev/null || { munged --force && sleep 1; }
    pgrep -x slurmctld >/dev/null || slurmctld
    sleep 2
    pgrep -x slurmd >/dev/null || slurmd -N localhost
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "slurm is up: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
            return 0
        fi
        sleep 1
    done
    echo "slurm did not come up; see /var/log/slurm/" >&2
    return 1
}

stop() {
    for daemon in slurmd slurmctld; do
        if [ -s "$STATE/$daemon.pid" ]; then
            kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
        fi
        pkill -x "$daemon" 2>/dev/null || true
    done
    pkill -x munged 2>/dev/null || true
    echo "slurm stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
