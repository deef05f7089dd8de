#!/usr/bin/env bash
# Stops the cluster scripts/slurm-up.sh started in STATE_DIR (default
# /tmp/sgpu-slurm): its jobs are cancelled, then slurmd and slurmctld are
# stopped through their pid files. munged is left running (other users of
# the machine may need it) unless --munge is given.
#
#   scripts/slurm-down.sh [--munge] [STATE_DIR]
set -uo pipefail

munge=0
if [ "${1:-}" = --munge ]; then
  munge=1
  shift
fi
dir=${1:-${SGPU_SLURM_DIR:-/tmp/sgpu-slurm}}
export SLURM_CONF=$dir/slurm.conf

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$dir/slurmctld.pid"; then
  scancel --full --quiet --state=PENDING 2>/dev/null
  scancel --full --quiet 2>/dev/null
fi
stop() {
  local pidfile=$1
  alive "$pidfile" || return 0
  kill "$(cat "$pidfile")"
  for _ in $(seq 100); do
    alive "$pidfile" || return 0
    sleep 0.1
  done
  kill -9 "$(cat "$pidfile")" 2>/dev/null
}
stop "$dir/slurmd.pid"
stop "$dir/slurmctld.pid"
if [ "$munge" = 1 ]; then
  stop /run/munge/munged.pid
fi
exit 0
