#!/bin/sh
# The batch script of a slurm worker (runtime/slurm.c). Embedded in libsgpu at
# build time; sgpud writes one copy per worker to its dir, with the marker
# line after "set -u" replaced by the worker's parameters
# (runtime/slurm-script.c), every value single-quoted:
#   sgpu_addr_file  where "NODE PORT GPUS" is written once the port is chosen
#   sgpu_image      1: run a container (the next four), empty: run a command
#   sgpu_cid, sgpu_config, sgpu_runtime, sgpu_lower
#                   the container's id, its config.json (tokens @SGPU_PORT@,
#                   @SGPU_GPUS@, @SGPU_NVGPUS@ filled in here), the OCI runtime
#                   and the overlay's layer dirs as this node sees them
#   sgpu_env        a function exporting the spec's environment (commands)
#   sgpu_exec       a function exec'ing the command, "$PORT" left to the shell
# shellcheck disable=SC2154,SC2317 # the sgpu_* values come with the parameters; cleanup runs from a trap
set -u
# @SGPU_JOB_PARAMS@
if [ -n "$sgpu_image" ] && [ -z "${SGPU_PRIVATE_NS-}" ]; then
  # In a private mount namespace: the overlay root dies with the job even
  # when it is killed, and a hybrid cgroup layout can be hidden from crun.
  SGPU_PRIVATE_NS=1 exec unshare -m --propagation private "$0" "$@"
  echo "sgpu: cannot enter a private mount namespace on $(hostname)" >&2
  exit 75
fi
# A free port on this node: outside the kernel's range for the local
# ports of connections (a port held by one, even in TIME_WAIT, cannot be
# bound by a listener) and held by no socket at all.
# shellcheck disable=SC2046 # the range's two numbers are meant to be split
set -- $(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) 32768 60999
lo=$1 hi=$2
if [ $((lo - 10000)) -ge 2000 ]; then base=10000 span=$((lo - 10000))
elif [ $((65535 - hi)) -ge 2000 ]; then base=$((hi + 1)) span=$((65535 - hi))
else base=20000 span=40000; fi
used=$(awk 'NR > 1 { split($2, a, ":"); printf " %s", a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
port=
i=0
while [ $i -lt 200 ]; do
  p=$((base + $(od -An -N2 -tu2 /dev/urandom) % span))
  case "$used " in *" $(printf %04X $p) "*) ;; *) port=$p; break ;; esac
  i=$((i + 1))
done
[ -n "$port" ] || { echo "sgpu: no free port on $(hostname)" >&2; exit 75; }
# GPUs: as Slurm set them, else the indexes of the job's GRES.
gpus=${CUDA_VISIBLE_DEVICES-}
if [ -z "$gpus" ] && [ -n "${SLURM_JOB_ID-}" ]; then
  gpus=$(scontrol show job -d "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.*GRES=[^ ]*(IDX:\([0-9,-]*\)).*/\1/p' |
    head -n 1 | awk -F, '{ s = ""; for (i = 1; i <= NF; i++) { n = split($i, r, "-"); hi = n > 1 ? r[2] : r[1];
      for (g = r[1]; g <= hi; g++) s = s (s == "" ? "" : ",") g } print s }')
fi
node=${SLURMD_NODENAME:-$(hostname)}
printf '%s %s %s\n' "$node" "$port" "${gpus:--}" >"$sgpu_addr_file.tmp" && mv "$sgpu_addr_file.tmp" "$sgpu_addr_file" || exit 75
if [ -z "$sgpu_image" ]; then
  export PORT="$port" CUDA_VISIBLE_DEVICES="$gpus" NVIDIA_VISIBLE_DEVICES="${gpus:-void}" CUDA_DEVICE_ORDER=PCI_BUS_ID
  sgpu_env
  sgpu_exec
  exit 127
fi
runtime=$sgpu_runtime
cid=$sgpu_cid
b=${TMPDIR:-/tmp}/sgpu-bundle.${SLURM_JOB_ID:-$$}
mode=
cleanup() {
  "$runtime" --root "$b/state" ${mode:+"$mode"} delete --force "$cid" >/dev/null 2>&1
  while umount -l "$b/rootfs" 2>/dev/null; do :; done
  rm -rf --one-file-system "$b"
}
trap cleanup EXIT
mkdir -p "$b/upper" "$b/work" "$b/rootfs" || exit 75
sed -e "s/@SGPU_PORT@/$port/g" -e "s/@SGPU_GPUS@/$gpus/g" -e "s/@SGPU_NVGPUS@/${gpus:-void}/g" "$sgpu_config" >"$b/config.json" || exit 75
# crun refuses a hybrid cgroup layout (cgroup v1 controllers and a cgroup2
# mount at /sys/fs/cgroup/unified): hide that mount, and run without a
# cgroup manager, as sgpud does on its own node.
case "${runtime##*/}" in crun)
  if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] &&
     [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
    umount -l /sys/fs/cgroup/unified && mode=--cgroup-manager=disabled
  fi ;;
esac
if [ -n "$sgpu_lower" ]; then
  mount -t overlay overlay -o "nodev,nosuid,lowerdir=$sgpu_lower,upperdir=$b/upper,workdir=$b/work" "$b/rootfs" || exit 75
else
  mkdir -p "$b/empty" &&
  mount -t overlay overlay -o "nodev,nosuid,lowerdir=$b/empty,upperdir=$b/upper,workdir=$b/work" "$b/rootfs" || exit 75
fi
child=
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
"$runtime" --root "$b/state" ${mode:+"$mode"} run --bundle "$b" "$cid" </dev/null &
child=$!
rc=0
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break
done
exit $rc
