#!/usr/bin/env bash
# Stop what start_slurm.sh started, by the pids it recorded under $DIFFLENS_SLURM_DIR: cancel the test cluster's
# jobs, then stop slurmd, slurmctld and munged (only if start_slurm.sh started it). Safe to run twice.
set -uo pipefail
dir=${DIFFLENS_SLURM_DIR:-/tmp/difflens-slurm}
export SLURM_CONF=$dir/slurm.conf

stop() {  # stop <name>: SIGTERM the pid recorded in $dir/run/<name>.pid, wait up to 20 s, then SIGKILL
    local pidfile=$dir/run/$1.pid pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "$1: stopped (pid $pid)"
    fi
    rm -f "$pidfile"
}

[ -f "$SLURM_CONF" ] && scancel --full --quiet --user "$(id -un)" 2>/dev/null
stop slurmd
stop slurmctld
stop munged
# slurmd's link to the configuration it fetched (configless), for srun inside jobs: remove it if it is ours
[ "$(readlink /run/slurm/conf 2>/dev/null)" = "$dir/spool/d/conf-cache" ] && rm -f /run/slurm/conf
exit 0
