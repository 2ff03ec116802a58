#!/usr/bin/env bash
# Install Debian's SLURM (controller, node daemon, client commands) and munge. Idempotent; needs root for apt-get.
set -euo pipefail
missing=0
for tool in slurmctld slurmd sbatch squeue scontrol munged; do
    command -v "$tool" >/dev/null || missing=1
done
[ "$missing" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm.sh: slurmctld/slurmd/munge are missing and installing them needs root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
echo "installed: $(slurmctld -V)"
