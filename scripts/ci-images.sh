#!/usr/bin/env bash
# CI's image step (run by .ci/run after the test suite): build both images from this repository's
# Dockerfiles with buildah on a Debian base made locally with mmdebstrap (CI cannot pull), the
# trainer with the CPU torch wheel on this machine, then run them (tests/images/smoke.py):
#   1. trainer:  the operator image renders stage 1's PyTorchJob; the trainer image runs that
#                container's command and env on 2 gloo processes and writes result.json;
#   2. operator: the operator image (uid 10001) drives examples/tiny-cpu.yaml (stages shortened to
#                CTXEXT_SMOKE_STEPS steps, gates dropped) to Succeeded against the test API server,
#                with `ctxext local-executor` running in the trainer image.
# Needs root (buildah's chroot isolation), network for pip, and `scripts/setup.sh --images` run before.
#
#   scripts/ci-images.sh [WORKDIR]      (default /tmp/ctxext-ci-images)
#
# Environment: CTXEXT_TORCH_WHEEL (default: the torch 2.13.0 CPU wheel in /opt/wheels),
# CTXEXT_SMOKE_STEPS (default 4), CTXEXT_CI_STORE (the buildah store, default /var/lib/ctxext-ci/containers),
# STORAGE_DRIVER (default overlay, vfs when overlay cannot mount here).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/ctxext-ci-images}
[ "$(id -u)" = 0 ] || { echo "ci-images.sh: needs root (buildah --isolation chroot)" >&2; exit 1; }
wheel=${CTXEXT_TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -n 1)}
[ -n "$wheel" ] && [ -f "$wheel" ] || {
  echo "ci-images.sh: no CPU torch wheel (set CTXEXT_TORCH_WHEEL to a torch-2.13.0+cpu .whl)" >&2; exit 1; }

# A container store of CI's own (CTXEXT_CI_STORE), with overlay when this kernel mounts it: vfs copies
# a whole image for every container (minutes for the trainer image); else vfs.
store=${CTXEXT_CI_STORE:-/var/lib/ctxext-ci/containers}
use_store() {
  mkdir -p "$store"
  printf '[storage]\ndriver = "%s"\ngraphroot = "%s"\nrunroot = "%s"\n' "$1" "$store/$1" "/run/ctxext-ci/$1" \
    >"$store/storage-$1.conf"
  export CONTAINERS_STORAGE_CONF=$store/storage-$1.conf STORAGE_DRIVER=$1
}
use_store "${STORAGE_DRIVER:-overlay}"
if ! { ctr=$(buildah from scratch) && buildah mount "$ctr" >/dev/null && buildah rm "$ctr" >/dev/null; } 2>/dev/null; then
  echo "[ci-images] $STORAGE_DRIVER storage does not work here; using vfs" >&2
  use_store vfs
fi
echo "[ci-images] buildah storage: $STORAGE_DRIVER in $store" >&2

t0=$(date +%s)
refs=$(./scripts/build-images.sh --base-from-debs --tag ci --torch "$wheel")
t1=$(date +%s)
op=$(sed -n 's/^operator=//p' <<<"$refs")
tr=$(sed -n 's/^trainer=//p' <<<"$refs")
mkdir -p "$work"
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
.venv/bin/python -m tests.images.smoke trainer --operator-image "$op" --trainer-image "$tr" --workdir "$work"
t2=$(date +%s)
.venv/bin/python -m tests.images.smoke operator --operator-image "$op" --trainer-image "$tr" --workdir "$work" \
  --steps "${CTXEXT_SMOKE_STEPS:-4}" --timeout 1200
t3=$(date +%s)
echo "[ci-images] build $((t1 - t0)) s, trainer smoke $((t2 - t1)) s, operator smoke $((t3 - t2)) s, total $((t3 - t0)) s"
