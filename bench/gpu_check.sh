#!/usr/bin/env bash
# The GPU check: DiT-XL/2 bf16 training MFU at 256 px, MM-DiT training MFU, FID-sampling images/s and
# sampler-service images/s on one CUDA device (bench/gpu_check.py says what each number covers).
# Needs torch (no Ray); budget: at most 8 minutes on one H200 (a hard limit below stops it there).
# Without CUDA it says so and exits 0.
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
  echo "gpu_check: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)')); nothing measured."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout --signal=INT --kill-after=20 480 "$PY" bench/gpu_check.py "$@"
