#!/usr/bin/env bash
# Builds the test worker (tests/fixtures/test-worker.c) into an OCI image and pushes it to a registry.
#   oci-image.sh build OUT REPO_ROOT   static test-worker, image layout OUT/layout:latest
#   oci-image.sh push OUT REGISTRY NAME:TAG [CREDS]   (CREDS user:password)
#   oci-image.sh probe OUT REPO_ROOT   static isolation probe, image layout OUT/layout:latest
# Layer 1 holds /test-worker and /etc/gone; layer 2 deletes /etc/gone (a whiteout).
set -euo pipefail
cmd=$1 out=$2
case "$cmd" in
build)
  repo=$3
  mkdir -p "$out"
  cc -O2 -static -pthread -o "$out/test-worker" "$repo/tests/fixtures/test-worker.c"
  umoci init --layout "$out/layout"
  umoci new --image "$out/layout:latest"
  umoci unpack --image "$out/layout:latest" "$out/bundle"
  cp "$out/test-worker" "$out/bundle/rootfs/test-worker"
  mkdir -p "$out/bundle/rootfs/etc"
  echo gone > "$out/bundle/rootfs/etc/gone"
  echo kept > "$out/bundle/rootfs/etc/kept"
  umoci repack --image "$out/layout:latest" "$out/bundle"
  rm -rf "$out/bundle"
  umoci unpack --image "$out/layout:latest" "$out/bundle"
  rm "$out/bundle/rootfs/etc/gone"
  umoci repack --image "$out/layout:latest" "$out/bundle"
  umoci config --image "$out/layout:latest" --config.entrypoint /test-worker \
    --config.env MODEL=from-image --config.env IMAGE_ONLY=yes --config.workingdir /
  ;;
probe)
  repo=$3
  mkdir -p "$out"
  cc -O2 -static -o "$out/isolation-probe" "$repo/tests/integration/isolation-probe.c"
  umoci init --layout "$out/layout"
  umoci new --image "$out/layout:latest"
  umoci unpack --image "$out/layout:latest" "$out/bundle"
  cp "$out/isolation-probe" "$out/bundle/rootfs/isolation-probe"
  mkdir -p "$out/bundle/rootfs/tmp" "$out/bundle/rootfs/etc"
  chmod 1777 "$out/bundle/rootfs/tmp"
  umoci repack --image "$out/layout:latest" "$out/bundle"
  rm -rf "$out/bundle"
  umoci config --image "$out/layout:latest" --config.entrypoint /isolation-probe --config.workingdir /
  ;;
push)
  registry=$3 ref=$4 creds=${5:-}
  args=(--insecure-policy copy --dest-tls-verify=false)
  [ -n "$creds" ] && args+=(--dest-creds "$creds")
  skopeo "${args[@]}" "oci:$out/layout:latest" "docker://$registry/$ref" >/dev/null
  ;;
*)
  echo "usage: $0 build|push ..." >&2
  exit 2
  ;;
esac
