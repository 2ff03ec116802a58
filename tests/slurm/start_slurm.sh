#!/usr/bin/env bash
# Start a one-node SLURM cluster on this host: munged (unless one already answers), slurmctld and slurmd.
# Everything lives under $DIFFLENS_SLURM_DIR (default /tmp/difflens-slurm): the slurm.conf written from
# slurm.conf.in, spool, logs and the pid files of the daemons started here, which stop_slurm.sh stops.
# Clients find the cluster through SLURM_CONF=$DIFFLENS_SLURM_DIR/slurm.conf. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${DIFFLENS_SLURM_DIR:-/tmp/difflens-slurm}
ctld_port=${DIFFLENS_SLURMCTLD_PORT:-16817}
slurmd_port=${DIFFLENS_SLURMD_PORT:-16818}

if [ "$(id -u)" -ne 0 ]; then
    echo "start_slurm.sh: starting slurmctld/slurmd needs root" >&2
    exit 1
fi
if [ -f "$dir/run/slurmctld.pid" ] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null; then
    echo "start_slurm.sh: a test cluster is already running from $dir (stop it with stop_slurm.sh)" >&2
    exit 1
fi
if [ -e /etc/slurm/slurm.conf ]; then  # srun inside the jobs would read it, and talk to that site's controller
    echo "start_slurm.sh: /etc/slurm/slurm.conf exists (a real SLURM here?); run the test on a machine without one" >&2
    exit 1
fi
rm -rf "$dir/spool" "$dir/log"
mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/log" "$dir/run"

# This node as slurmd sees it, declared with at least 2 CPUs and 64 GB (SlurmdParameters=config_overrides): nothing
# is enforced here (no cgroups), so a small CI machine still schedules the jobs' real --cpus-per-task and --mem,
# also the doubled --mem of a retry. Jobs take one CPU each (the test overlay's max-threads), two at a time.
node=$(hostname -s)
hw=$(slurmd -C | head -1)
field() { echo "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
cpus=$(( $(field CPUs) > 2 ? $(field CPUs) : 2 ))
mem_mb=$(( $(field RealMemory) * 9 / 10 ))
mem_mb=$(( mem_mb > 64000 ? mem_mb : 64000 ))
sed -e "s|@DIR@|$dir|g" -e "s|@NODE@|$node|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
    -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g" "$here/slurm.conf.in" > "$dir/slurm.conf"
export SLURM_CONF=$dir/slurm.conf

# munge: reuse a running munged (a site's, or one left by the system); else start one as the munge user.
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "munged: already running, reused"
else
    [ -s /etc/munge/munge.key ] || { mungekey --create --force && chown munge:munge /etc/munge/munge.key; }
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$dir/run/munged.pid"
    echo "munged: started (pid $(cat "$dir/run/munged.pid"))"
fi

# slurmd fetches its configuration from slurmctld (configless) and links it at /run/slurm/conf, where srun inside a
# job finds it: the executor plugin's job step drops SLURM_CONF from srun's environment.
slurmctld -c -f "$dir/slurm.conf"
slurmd -c --conf-server "127.0.0.1:$ctld_port"

# Wait for the node to report idle (it registers with the controller within a few seconds).
for _ in $(seq 60); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    [ "$state" = idle ] && break
    sleep 1
done
if [ "$state" != idle ]; then
    echo "start_slurm.sh: node $node is '${state:-unreachable}' after 60 s; logs in $dir/log" >&2
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
fi
echo "slurm: $(sinfo -V), node $node idle (CPUs=$cpus RealMemory=$mem_mb)"
echo "export SLURM_CONF=$dir/slurm.conf"
