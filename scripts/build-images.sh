#!/usr/bin/env bash
# Build the operator image (Dockerfile) and the trainer image (trainer_image/Dockerfile) from this
# repository, check each against its size budget, and optionally push them.
#
#   scripts/build-images.sh [--push REGISTRY] [--tag T] [--only operator|trainer] [--torch SPEC|WHEEL]
#                           [--base-from-debs] [--builder docker|buildah] [--dry-run]
#
#   --push REGISTRY   name the images REGISTRY/operator:T and REGISTRY/trainer:T and push them
#                     (without it they are named ghcr.io/ctxext/...:T and stay local)
#   --tag T           image tag (default: the version in pyproject.toml)
#   --only NAME       build one image
#   --torch X         what the trainer image installs for torch (default torch==2.13.0 from PyPI, the
#                     CUDA build); a local .whl file is mounted read-only into the build (buildah only)
#   --base-from-debs  build the Debian bookworm base locally with mmdebstrap instead of pulling the
#                     pinned debian:bookworm-slim (buildah only; what CI does, it cannot pull)
#   --builder B       docker or buildah (default: docker when its daemon answers, else buildah)
#   --dry-run         print what would be built and pushed, and the references; build nothing
#
# The last lines on stdout are the references, for the chart and the examples:
#   operator=REF
#   trainer=REF
# Budgets (MB, uncompressed; the build fails above them): CTXEXT_OPERATOR_MAX_MB (400),
# CTXEXT_TRAINER_MAX_MB (2600 with a CPU torch wheel, 12000 with the default CUDA torch).
# buildah runs with STORAGE_DRIVER (default vfs) and keeps a cache tag per build input, so an
# unchanged tree is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "build-images.sh: $*" >&2; exit 1; }
log() { echo "[build-images $(date -u +%H:%M:%S)] $*" >&2; }
usage() { sed -n '5,6p' "$0" | sed 's/^#  *//' >&2; exit 2; }

registry=ghcr.io/ctxext
push=0
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
only=""
torch="torch==2.13.0"
base_from_debs=0
builder=""
dry=0
while (($#)); do
  case $1 in
    --push) (($# >= 2)) || usage; registry=${2%/}; push=1; shift 2 ;;
    --tag) (($# >= 2)) || usage; tag=$2; shift 2 ;;
    --only) (($# >= 2)) || usage; only=$2; shift 2 ;;
    --torch) (($# >= 2)) || usage; torch=$2; shift 2 ;;
    --base-from-debs) base_from_debs=1; shift ;;
    --dry-run) dry=1; shift ;;
    --builder) (($# >= 2)) || usage; builder=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case $only in ""|operator|trainer) ;; *) die "--only takes operator or trainer, not '$only'" ;; esac
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "'$tag' is not a valid image tag"
[[ $registry =~ ^[a-z0-9][a-z0-9.:_/-]*$ ]] || die "'$registry' is not a registry path such as registry.example.com/ctxext"

if ((dry)); then
  names=(); [ "$only" = trainer ] || names+=(operator); [ "$only" = operator ] || names+=(trainer)
  for name in "${names[@]}"; do
    if [ "$name" = operator ]; then echo "would build $registry/operator:$tag from Dockerfile"
    else echo "would build $registry/trainer:$tag from trainer_image/Dockerfile with torch from $torch"; fi
    if ((push)); then echo "would push $registry/$name:$tag"; fi
  done
  for name in "${names[@]}"; do echo "$name=$registry/$name:$tag"; done
  exit 0
fi

# The builder: docker when a daemon answers, else buildah.
if [ -z "$builder" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then builder=docker
  elif command -v buildah >/dev/null 2>&1; then builder=buildah
  else die "neither docker (with a running daemon) nor buildah is available; install one (Debian: apt-get install buildah)"; fi
fi
case $builder in
  docker) docker info >/dev/null 2>&1 || die "docker's daemon does not answer ('docker info' fails)" ;;
  buildah) command -v buildah >/dev/null 2>&1 || die "buildah is not installed (Debian: apt-get install buildah)" ;;
  *) die "--builder takes docker or buildah, not '$builder'" ;;
esac
if ((base_from_debs)) && [ "$builder" != buildah ]; then die "--base-from-debs needs --builder buildah"; fi

# pip inside the builds needs the package index.
index=${PIP_INDEX_URL:-https://pypi.org/simple}
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if ! python3 - "$index" "$ca" <<'EOF' >/dev/null 2>&1; then
import os, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2] if os.path.isfile(sys.argv[2]) else None)
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/pip/", timeout=20, context=ctx).read(1)
EOF
  die "pip cannot reach $index (no network?): both images install their Python packages from it"
fi

B=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
common=()
if [ "$builder" = buildah ]; then
  common=(--isolation chroot --layers=false)
  # The CA bundle pip trusts on this machine, mounted read-only for the build only (never in the image).
  if [ -f "$ca" ]; then common+=(-v "$ca:/run/build-ca.crt:ro" --build-arg BUILD_CA_CERT=/run/build-ca.crt); fi
fi

if ((base_from_debs)); then
  base=localhost/ctxext-base:bookworm
  if ! "${B[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null 2>&1 || die "--base-from-debs needs mmdebstrap (Debian: apt-get install mmdebstrap)"
    cache=${CTXEXT_IMAGE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ctxext-images}
    mkdir -p "$cache"
    tarball=$cache/debian-bookworm-minbase.tar
    if [ ! -s "$tarball" ]; then
      log "mmdebstrap --variant=minbase bookworm (the base image from Debian's packages)"
      # As debian:bookworm-slim does: no man pages, docs (but copyrights) or locales.
      mmdebstrap --quiet --variant=minbase --format=tar \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' bookworm "$tarball.tmp" >&2
      mv "$tarball.tmp" "$tarball"
    fi
    ctr=$("${B[@]}" from scratch)
    "${B[@]}" add "$ctr" "$tarball" / >/dev/null
    "${B[@]}" config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    "${B[@]}" commit --quiet --rm "$ctr" "$base" >/dev/null
    log "base image $base from $tarball"
  fi
  common+=(--pull=never --build-arg "BASE_IMAGE=$base")
fi

size_mb() {  # uncompressed size of a local image in MB
  if [ "$builder" = docker ]; then
    echo $(( $(docker image inspect -f '{{.Size}}' "$1") / 1000000 ))
  else
    "${B[@]}" images --json "$1" | python3 -c 'import json,sys
n, u = json.load(sys.stdin)[0]["size"].split()
print(round(float(n) * {"B": 1e-6, "kB": 1e-3, "MB": 1, "GB": 1e3}[u]))'
  fi
}

inputs_hash() {  # what a build depends on: the context files, the Dockerfile, the build arguments
  { find pyproject.toml README.md .dockerignore operator trainer_image -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info*' -print0 | sort -z | xargs -0 sha256sum
    echo "$*"; } | sha256sum | cut -c1-16
}

build() {  # name dockerfile budget_mb [build args...]
  local name=$1 dockerfile=$2 budget=$3; shift 3
  local ref=$registry/$name:$tag args=("${common[@]}" "$@" -f "$dockerfile")
  local key cached start size
  key=$(inputs_hash "$name" "${args[@]}")
  cached=localhost/ctxext-cache/$name:$key
  start=$(date +%s)
  if [ "$builder" = buildah ] && "${B[@]}" inspect --type image "$cached" >/dev/null 2>&1; then
    log "$name: inputs unchanged ($key), reusing $cached"
    "${B[@]}" tag "$cached" "$ref"
  elif [ "$builder" = buildah ]; then
    log "$name: buildah bud -f $dockerfile"
    "${B[@]}" bud --quiet "${args[@]}" -t "$ref" . >&2
    "${B[@]}" tag "$ref" "$cached"
    # One cached build per image: drop the previous ones.
    "${B[@]}" images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/ctxext-cache/$name:" | grep -v ":$key\$" \
      | while read -r old; do "${B[@]}" rmi "$old" >/dev/null 2>&1 || true; done
  else
    log "$name: docker build -f $dockerfile"
    docker build "${args[@]}" -t "$ref" . >&2
  fi
  size=$(size_mb "$ref")
  log "$name: $ref, $size MB, $(( $(date +%s) - start )) s (budget $budget MB)"
  ((size <= budget)) || die "the $name image is $size MB, over its budget of $budget MB"
  if ((push)); then
    log "$name: push $ref"
    if [ "$builder" = docker ]; then docker push "$ref" >&2; else "${B[@]}" push "$ref" "docker://$ref" >&2; fi
  fi
  echo "$name=$ref"
}

refs=()
if [ "$only" != trainer ]; then
  refs+=("$(build operator Dockerfile "${CTXEXT_OPERATOR_MAX_MB:-400}")")
fi
if [ "$only" != operator ]; then
  targs=()
  if [ -f "$torch" ]; then
    [ "$builder" = buildah ] || die "--torch with a wheel file needs buildah (docker cannot mount it); give a requirement such as torch==2.13.0"
    wheel=$(cd "$(dirname "$torch")" && pwd)/$(basename "$torch")
    targs+=(-v "$(dirname "$wheel"):/run/torch-wheel:ro" --build-arg "TORCH=/run/torch-wheel/$(basename "$wheel")")
  else
    targs+=(--build-arg "TORCH=$torch")
  fi
  case $torch in *+cpu*|*cpu*.whl) budget=${CTXEXT_TRAINER_MAX_MB:-2600} ;; *) budget=${CTXEXT_TRAINER_MAX_MB:-12000} ;; esac
  refs+=("$(build trainer trainer_image/Dockerfile "$budget" "${targs[@]}")")
fi
printf '%s\n' "${refs[@]}"
