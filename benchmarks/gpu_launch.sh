#!/usr/bin/env bash
# The GPU suite on a bare GPU machine that has Python with torch and transformers (and no network): the
# wheels carried in .whl/ (`make gpu-wheels`, run where pip reaches PyPI) go into /tmp/site without their
# dependencies, never torch, then benchmarks/gpu_suite.py writes its results into the output folder.
#
#     benchmarks/gpu_launch.sh [OUT_DIR] [gpu_suite options]    # OUT_DIR: default $OUT, else
#                                                                # benchmarks/results/gpu_suite
# PYTHON chooses the interpreter (default python3), GPU_SITE the install folder (default /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -gt 0 && $1 != --* ]]; then
    out_dir=$1
    shift
else
    out_dir=${OUT:-benchmarks/results/gpu_suite}
fi
python=${PYTHON:-python3}
site=${GPU_SITE:-/tmp/site}

shopt -s nullglob
wheels=(.whl/*.whl)
for wheel in "${wheels[@]}"; do
    case "$(basename "$wheel")" in
        torch-*|torchvision-*|nvidia_*|triton-*)
            echo "gpu_launch: refusing $wheel: the machine's own torch is used, never a carried one" >&2
            exit 2 ;;
    esac
done
if ((${#wheels[@]})); then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "${wheels[@]}"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 YOLO_OFFLINE=1

# Fail in a second, with the reason, rather than minutes into the suite.
"$python" - <<'PY'
import importlib, sys
import torch
missing = []
for name in ("transformers", "av", "zmq", "msgpack", "cv2", "safetensors", "prometheus_client", "pytest"):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
if missing:
    sys.exit("gpu_launch: missing Python packages: " + ", ".join(missing) + "; carry them with make gpu-wheels")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"gpu_launch: python {sys.version.split()[0]}, torch {torch.__version__}, {gpu}", flush=True)
PY
mkdir -p "$out_dir"
exec "$python" -m benchmarks.gpu_suite --out "$out_dir" "$@"
