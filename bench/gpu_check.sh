#!/usr/bin/env bash
# The GPU check: DiT-XL/2 bf16 training MFU at 256 px, MM-DiT training MFU, FID-sampling images/s and
# sampler-service images/s on one CUDA device (bench/gpu_check.py says what each number covers).
# Needs torch (no Ray); budget: at most 8 minutes on one H200 (a hard limit below stops it there).
# Without a GPU it says so and exits 0; on a machine whose nvidia-smi lists GPUs that torch cannot use, exits 3.
#   bash bench/gpu_check.sh                 # defaults
#   bash bench/gpu_check.sh --no-compile    # eager mode (faster start, lower MFU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch; set PYTHON to an interpreter that has it" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  torch_version="$("$PY" -c 'import torch; print(torch.__version__)')"
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    # A GPU machine whose torch cannot use it (e.g. the CPU wheel of this project's laptop pin): nothing measured
    # is a failure here, not a pass.
    echo "gpu_check: nvidia-smi lists GPUs but torch $torch_version ($PY) sees no CUDA device; install a CUDA torch" \
         "or set PYTHON to an interpreter that has one" >&2
    exit 3
  fi
  echo "gpu_check: no CUDA device visible to torch ($torch_version); nothing measured."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout --signal=INT --kill-after=20 480 "$PY" bench/gpu_check.py "$@"
