#!/usr/bin/env bash
# Starts a one-machine Slurm cluster for tests: munged (as the munge user),
# slurmctld and slurmd, with 4 GPUs declared as GRES files, in a state dir
# (default /tmp/sgpu-slurm). Idempotent: daemons already running from that
# dir are kept. Waits (bounded) until sinfo shows the node idle, then prints
# the line to export: SLURM_CONF=DIR/slurm.conf.
#
#   scripts/slurm-up.sh [STATE_DIR]     (SGPU_SLURM_GPUS=4, SGPU_SLURM_WAIT_S=60)
#
# With SGPU_SLURM_REST=1 it also enables Slurm's JWT authentication
# (AuthAltTypes=auth/jwt, an HS256 key generated in STATE_DIR/jwt.key) and
# starts slurmrestd on 127.0.0.1:SGPU_SLURM_REST_PORT (default 6920), as the
# user nobody; it then also prints SLURMRESTD=http://127.0.0.1:PORT and
# SLURM_JWT_KEY=STATE_DIR/jwt.key.
# Needs root and the packages slurm-wlm, slurm-client and munge (and
# slurmrestd for SGPU_SLURM_REST=1).
set -euo pipefail

dir=${1:-${SGPU_SLURM_DIR:-/tmp/sgpu-slurm}}
ngpus=${SGPU_SLURM_GPUS:-4}
wait_s=${SGPU_SLURM_WAIT_S:-60}
rest=${SGPU_SLURM_REST:-0}
rest_port=${SGPU_SLURM_REST_PORT:-6920}
node=$(hostname -s)

for b in munged slurmctld slurmd sinfo sbatch; do
  command -v "$b" >/dev/null || { echo "slurm-up: $b is not installed (scripts/install-deps.sh)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "slurm-up: must run as root" >&2; exit 2; }
if [ "$rest" = 1 ]; then
  command -v slurmrestd >/dev/null || { echo "slurm-up: slurmrestd is not installed" >&2; exit 2; }
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

mkdir -p "$dir"/{ctld,d,log,spool}
export SLURM_CONF=$dir/slurm.conf

# munge: its own runtime and log dirs, owned by the munge user.
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
if ! alive /run/munge/munged.pid; then
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- munged --force
fi

cores=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
gpu_files=/tmp/sgpu-slurm-gpu
for ((i = 0; i < ngpus; i++)); do touch "$gpu_files$i"; done
last=$((ngpus - 1))

cat >"$dir/slurm.conf.new" <<EOF
ClusterName=sgpu
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6917
SlurmdPort=6918
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=300
KillWait=5
InactiveLimit=0
MpiDefault=none
# More CPUs than the machine has, so that GPUs, not cores, limit how many jobs run.
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$node NodeAddr=127.0.0.1 CPUs=$((cores * 8)) RealMemory=$mem Gres=gpu:a100:$ngpus State=UNKNOWN
PartitionName=gpu Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:64
EOF
if [ "$rest" = 1 ]; then
  if [ ! -s "$dir/jwt.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$dir/jwt.key.new" bs=32 count=1 status=none)
    mv "$dir/jwt.key.new" "$dir/jwt.key"
  fi
  chmod 0600 "$dir/jwt.key"
  printf 'AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key=%s\n' "$dir/jwt.key" >>"$dir/slurm.conf.new"
fi
cat >"$dir/gres.conf.new" <<EOF
Name=gpu Type=a100 File=$gpu_files[0-$last]
EOF
cat >"$dir/cgroup.conf.new" <<EOF
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainDevices=no
EOF
changed=0
for f in slurm.conf gres.conf cgroup.conf; do
  if ! cmp -s "$dir/$f.new" "$dir/$f"; then
    mv "$dir/$f.new" "$dir/$f"
    changed=1
  else
    rm -f "$dir/$f.new"
  fi
done

if [ "$changed" = 1 ]; then
  for p in slurmrestd slurmd slurmctld; do
    if alive "$dir/$p.pid"; then kill "$(cat "$dir/$p.pid")"; fi
  done
  for _ in $(seq 50); do
    alive "$dir/slurmrestd.pid" || alive "$dir/slurmd.pid" || alive "$dir/slurmctld.pid" || break
    sleep 0.1
  done
fi
if ! alive "$dir/slurmctld.pid"; then
  slurmctld -c -i
fi
if ! alive "$dir/slurmd.pid"; then
  slurmd
fi

deadline=$((SECONDS + wait_s))
state=
while [ $SECONDS -lt $deadline ]; do
  state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -1 || true)
  case "$state" in
  idle | mixed | allocated) break ;;
  down* | drain* | inval*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
case "$state" in
idle | mixed | allocated) ;;
*)
  echo "slurm-up: node $node is not idle after ${wait_s}s (state: ${state:-none}); logs in $dir/log" >&2
  tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 2>/dev/null || true
  exit 1
  ;;
esac
echo "SLURM_CONF=$SLURM_CONF"

if [ "$rest" = 1 ]; then
  # slurmrestd refuses to run as root; it binds first, then becomes nobody.
  # SLURM_JWT=daemon: it takes each request's token, not a munge identity.
  # The newest Slurm API plugin (the dbv* ones need slurmdbd, which this
  # cluster does not run).
  plugin=$(SLURM_JWT=daemon runuser -u nobody -- slurmrestd -f "$SLURM_CONF" -s list 2>&1 |
    sed -n 's|.*openapi/\(v[0-9.]*\)$|\1|p' | sort -V | tail -n 1)
  [ -n "$plugin" ] || { echo "slurm-up: slurmrestd lists no openapi/vX plugin" >&2; exit 1; }
  if ! alive "$dir/slurmrestd.pid"; then
    chmod o+rx "$dir"
    SLURM_JWT=daemon setsid slurmrestd -f "$SLURM_CONF" -a rest_auth/jwt -s "openapi/$plugin" -u nobody \
      "127.0.0.1:$rest_port" \
      </dev/null >>"$dir/log/slurmrestd.log" 2>&1 &
    echo $! >"$dir/slurmrestd.pid"
  fi
  up=
  for _ in $(seq 100); do
    if ! alive "$dir/slurmrestd.pid"; then break; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$rest_port") 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  if [ -z "$up" ]; then
    echo "slurm-up: slurmrestd did not start on 127.0.0.1:$rest_port; log in $dir/log/slurmrestd.log" >&2
    tail -n 20 "$dir/log/slurmrestd.log" >&2 2>/dev/null || true
    exit 1
  fi
  echo "SLURMRESTD=http://127.0.0.1:$rest_port"
  echo "SLURMRESTD_API=$plugin"
  echo "SLURM_JWT_KEY=$dir/jwt.key"
fi
