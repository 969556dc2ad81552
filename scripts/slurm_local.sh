#!/usr/bin/env bash
# A real one-node Slurm cluster for the tests marked `slurm`, without systemd (docs/cluster.md, "CI").
#
#   scripts/slurm_local.sh start   install the Debian packages when missing, write a private slurm.conf sized to
#                                  this machine, start munged, a private MariaDB, slurmdbd, slurmctld and slurmd,
#                                  wait until the node is idle, record every PID
#   scripts/slurm_local.sh stop    stop the recorded PIDs (TERM, wait, KILL; a zombie counts as stopped)
#   scripts/slurm_local.sh status  the recorded daemons and the node state
#
# Everything lives under $FV_SLURM_DIR (default /tmp/fv-slurm). Accounting (slurmdbd + MariaDB) is not optional:
# without it submitit cannot see a cancelled job and waits for it forever. Needs root (apt-get, munge user).
set -euo pipefail

DIR=${FV_SLURM_DIR:-/tmp/fv-slurm}
CONF=$DIR/etc/slurm.conf
PIDS=$DIR/pids
DB_PORT=${FV_SLURM_DB_PORT:-3307}
CLUSTER=fvlocal
export SLURM_CONF=$CONF

log() { echo "slurm_local: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    local need=()
    for bin in slurmctld slurmd sinfo munged slurmdbd mariadbd; do command -v "$bin" >/dev/null || need+=("$bin"); done
    [ ${#need[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${need[*]} and not root: install slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
    log "installing Slurm, munge and MariaDB from the Debian packages (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # not the slurm-wlm metapackage: it pulls 43 packages
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

# started in the background with its PID recorded; "$@" must exec the daemon itself (foreground mode)
spawn() {
    local name=$1; shift
    "$@" >"$DIR/log/$name.out" 2>&1 &
    echo "$name $!" >>"$PIDS"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local t=$1 what=$2; shift 2
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "$what not ready after ${t}s (logs in $DIR/log)"
        sleep 0.3
    done
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then log "munged already answers; reusing it"; return; fi
    [ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    # setpriv execs munged directly (unlike runuser), so $! is munged's own PID
    spawn munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
    wait_for 10 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
    local data=$DIR/mysql
    if [ ! -d "$data/mysql" ]; then
        mariadb-install-db --no-defaults --user=root --datadir="$data" --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.out" 2>&1 \
            || die "mariadb-install-db failed (see $DIR/log/mariadb-install.out)"
    fi
    spawn mariadbd mariadbd --no-defaults --user=root --datadir="$data" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --socket="$DIR/run/mysql.sock" --pid-file="$DIR/run/mariadbd.pid" --skip-log-error
    wait_for 30 mariadbd mariadb --no-defaults -S "$DIR/run/mysql.sock" -u root -e 'select 1'
    mariadb --no-defaults -S "$DIR/run/mysql.sock" -u root -e "
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'fvslurm';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'fvslurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

write_conf() {
    local host node_line cpus mem
    host=$(hostname -s)
    node_line=$(slurmd -C | head -1)                       # NodeName=... CPUs=... RealMemory=...
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=$((mem * 9 / 10))                                  # a little below the real memory, or the node drains
    node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$mem/" <<<"$node_line")
    cat >"$CONF" <<EOF
# written by scripts/slurm_local.sh: one node ($cpus CPUs, $mem MB), everything under $DIR
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmctldPort=${FV_SLURMCTLD_PORT:-6817}
SlurmdPort=${FV_SLURMD_PORT:-6818}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=${FV_SLURMDBD_PORT:-6819}
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=${FV_SLURMDBD_PORT:-6819}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=fvslurm
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
    # clients (sbatch, sacct, submitit) find the cluster without SLURM_CONF; never overwrite someone else's
    mkdir -p /etc/slurm
    if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then ln -sfn "$CONF" /etc/slurm/slurm.conf; fi
}

running() { [ -s "$PIDS" ] && while read -r _ pid; do alive "$pid" && return 0; done <"$PIDS"; return 1; }

alive() {  # a zombie (state Z) counts as stopped
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $st != Z* ]]
}

cmd_start() {
    if running; then log "already running (PIDs in $PIDS); stop it first"; sinfo -h -N -o '%N %T'; return 0; fi
    install_packages
    trap 'rc=$?; trap - EXIT; [ $rc -eq 0 ] || { log "start failed; stopping what it started"; cmd_stop; }; exit $rc' EXIT
    # a fresh cluster each time: controller state and accounting are wiped together, or job ids restart and old
    # records return
    rm -rf "$DIR"
    mkdir -p "$DIR"/{etc,state,spool,run,log}
    : >"$PIDS"
    write_conf
    start_munge
    start_mariadb
    spawn slurmdbd slurmdbd -D    # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd sacctmgr -i list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    spawn slurmctld slurmctld -D -i -f "$CONF"
    spawn slurmd slurmd -D -f "$CONF"
    wait_for 60 "the node" sh -c 'sinfo -h -N -o %T | grep -qx idle'
    wait_for 30 "accounting" sh -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
    trap - EXIT
    log "cluster $CLUSTER up: $(sinfo -h -N -o '%N %c CPUs %m MB %T'); SLURM_CONF=$CONF"
}

cmd_stop() {
    [ -s "$PIDS" ] || { log "nothing recorded in $PIDS"; return 0; }
    # reverse order of start: slurmd, slurmctld, slurmdbd, mariadbd, munged
    local lines
    mapfile -t lines < <(tac "$PIDS")
    for line in "${lines[@]}"; do
        read -r name pid <<<"$line"
        alive "$pid" || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
        if alive "$pid"; then log "$name ($pid) ignored TERM; killing it"; kill -KILL "$pid" 2>/dev/null || true; fi
        for _ in $(seq 25); do alive "$pid" || break; sleep 0.2; done
        alive "$pid" && die "$name ($pid) is still running"
        log "stopped $name ($pid)"
    done
    : >"$PIDS"
}

cmd_status() {
    [ -s "$PIDS" ] || { log "not started"; return 1; }
    while read -r name pid; do echo "$name $pid $(alive "$pid" && echo running || echo stopped)"; done <"$PIDS"
    sinfo -h -N -o '%N %T'
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
