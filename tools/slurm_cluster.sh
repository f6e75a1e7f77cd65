#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests of slurm/ and `eqv2-plugin submit`.
#
#   tools/slurm_cluster.sh start    install Debian's slurm/munge packages if missing (as root), write
#                                   the config, start munged, slurmctld and slurmd, wait for the node
#   tools/slurm_cluster.sh status   exit 0 if the controller answers and the node is up
#   tools/slurm_cluster.sh stop     stop the daemons this script started (by their pid files)
#   tools/slurm_cluster.sh env      print `export SLURM_CONF=...` for client commands (sbatch, squeue)
#
# Everything lives in $EQV2_SLURM_DIR (default /tmp/eqv2-slurm): slurm.conf, state and spool
# folders, logs, pid files, and a munge key and socket of its own, so /etc/slurm and /etc/munge are
# left alone. Client commands find the cluster through SLURM_CONF=$EQV2_SLURM_DIR/slurm.conf.
# No cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none. Jobs run as root.
# cred_expire=10: a requeued job may start again after ~10 s (Slurm's default waits 120 s).
# Ports: $EQV2_SLURMCTLD_PORT (6817) and $EQV2_SLURMD_PORT (6818). Partition: `debug`.
set -euo pipefail

DIR="${EQV2_SLURM_DIR:-/tmp/eqv2-slurm}"
CTLD_PORT="${EQV2_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${EQV2_SLURMD_PORT:-6818}"
CONF="$DIR/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket"
export SLURM_CONF="$CONF"

log() { echo "slurm_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    local missing=()
    for exe in slurmctld slurmd sbatch munged; do
        command -v "$exe" >/dev/null 2>&1 || [[ -x "/usr/sbin/$exe" ]] || missing+=("$exe")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; run as root to install them, or: apt-get install slurmctld slurmd slurm-client munge"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them (Debian/Ubuntu packages slurmctld slurmd slurm-client munge)"
    log "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$DIR/apt.log" 2>&1 || { tail -20 "$DIR/apt.log" >&2; die "apt-get update failed (log: $DIR/apt.log)"; }
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >>"$DIR/apt.log" 2>&1 \
        || { tail -20 "$DIR/apt.log" >&2; die "apt-get install failed (log: $DIR/apt.log)"; }
    log "installed in $((SECONDS - t0)) s"
}

pid_alive() {  # a live process (a killed daemon nobody reaped stays a zombie: not alive)
    local pid state
    pid=$(cat "$1" 2>/dev/null) || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n "$state" && "$state" != Z* ]]
}

node_line() {
    # CPUs, sockets, cores and memory as slurmd sees them; keep 512 MB for the system
    local line mem
    line=$(/usr/sbin/slurmd -C | head -1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem > 1024 ? mem - 512 : mem))/" <<<"$line")
    echo "$line NodeAddr=127.0.0.1 State=UNKNOWN"
}

write_config() {
    local host
    host=$(hostname -s)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
    chmod 755 "$DIR"
    cat >"$CONF" <<EOF
# written by tools/slurm_cluster.sh: a one-node test cluster without cgroups
ClusterName=eqv2test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
KillWait=1
MinJobAge=600
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
$(node_line)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if pid_alive "$DIR/munge/munged.pid"; then return 0; fi
    chown munge:munge "$DIR/munge"
    chmod 755 "$DIR/munge"
    if [[ ! -s "$DIR/munge/munge.key" ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" || die "munged did not start: $(tail -3 "$DIR/munge/munged.log" 2>/dev/null)"
    munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null || die "munge does not answer on $MUNGE_SOCKET"
}

node_ready() {
    local state
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1) || return 1
    [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]
}

cmd_status() {
    [[ -f "$CONF" ]] || { log "not configured ($CONF missing)"; return 1; }
    pid_alive "$DIR/slurmctld.pid" || { log "slurmctld not running"; return 1; }
    pid_alive "$DIR/slurmd.pid" || { log "slurmd not running"; return 1; }
    scontrol ping >/dev/null 2>&1 || { log "slurmctld does not answer"; return 1; }
    node_ready || { log "node not up: $(sinfo -h -N -o '%T %E' 2>&1)"; return 1; }
    echo "running: SLURM_CONF=$CONF"
}

cmd_start() {
    mkdir -p "$DIR"
    if cmd_status >/dev/null 2>&1; then
        echo "already running: SLURM_CONF=$CONF"
        return 0
    fi
    install_packages
    local t0=$SECONDS
    cmd_stop >/dev/null 2>&1 || true
    write_config
    start_munge
    /usr/sbin/slurmctld -f "$CONF" -i || die "slurmctld did not start: $(tail -5 "$DIR/log/slurmctld.log" 2>/dev/null)"
    /usr/sbin/slurmd -f "$CONF" || die "slurmd did not start: $(tail -5 "$DIR/log/slurmd.log" 2>/dev/null)"
    for _ in $(seq 1 60); do
        if node_ready; then
            scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
            echo "started in $((SECONDS - t0)) s: SLURM_CONF=$CONF"
            return 0
        fi
        sleep 0.5
    done
    log "node did not come up; slurmctld log:"; tail -15 "$DIR/log/slurmctld.log" >&2 || true
    log "slurmd log:"; tail -15 "$DIR/log/slurmd.log" >&2 || true
    die "cluster did not start (sinfo: $(sinfo -h -N -o '%T %E' 2>&1))"
}

stop_pid() {  # stop_pid PIDFILE NAME
    local pidfile=$1 pid
    pid_alive "$pidfile" || return 0
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do pid_alive "$pidfile" || return 0; sleep 0.2; done
    log "$2 ($pid) did not stop on TERM; killing"
    kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
    if [[ -f "$CONF" ]] && pid_alive "$DIR/slurmctld.pid"; then
        scancel --full --quiet --state=RUNNING "--user=$(id -un)" >/dev/null 2>&1 || true
        scancel --quiet "--user=$(id -un)" >/dev/null 2>&1 || true
    fi
    stop_pid "$DIR/slurmd.pid" slurmd
    stop_pid "$DIR/slurmctld.pid" slurmctld
    stop_pid "$DIR/munge/munged.pid" munged
    echo "stopped"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
