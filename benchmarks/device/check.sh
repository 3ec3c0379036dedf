#!/usr/bin/env bash
# Run ON THE DEVICE MACHINE (the device tool's run, carry [".whl"], from the repository root):
# issue 6's GPU measurement in one command that fits one call. It installs the wheels that
# fetch_wheels.sh put in .whl/, prints what the machine is, trains a3c and soft-q briefly on the
# GPU (so a failure shows in seconds, not after the benchmark's first rounds), times soft-q's
# update eager and as a CUDA graph (graph_update.py), then runs device_speed.py. Everything also
# goes to $OUT/device_check.log (when OUT is set), line by line, so a run cut off at its limit
# still returns what it measured.
#
#   bash benchmarks/device/check.sh     # defaults: ROUNDS=2 STEPS=100000 SOFT_Q_STEPS=20000
#                                       # NUM_ENVS=64, meant to end inside one 9-minute call
#   DEVICE=cpu NUM_ENVS=8 ROUNDS=1 STEPS=2000 SOFT_Q_STEPS=1000 ...   (a dry run without a GPU)
set -uo pipefail
cd "$(dirname "$0")/../.."
log=${OUT:-/tmp}/device_check.log
exec > >(tee -a "$log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 - <<'PY' || exit 1
import os, platform, torch, ale_py, gymnasium
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
      "cores", os.cpu_count(), "ale-py", ale_py.__version__, "gymnasium", gymnasium.__version__)
PY
for agent in a3c soft-q; do
    python3 -c "
import equirl
from equirl.zoo.train import train
r = train('$agent', 'PongNoFrameskip-v4', 4096, seed=0, device='$device', config_values={'learning_starts': 1024} if '$agent' == 'soft-q' else None)
print('smoke: $agent on $device,', round(r.steps_per_second), 'steps/s')" || exit 1
done
# soft-q's update eager against one captured CUDA graph (what graphs would give), ~1 minute; a
# failure here is printed and the main benchmark still runs.
python3 benchmarks/graph_update.py --device "$device" --updates 200 --rounds 3 || echo "graph_update.py failed (rc $?)"
python3 benchmarks/device_speed.py --device "$device" --num-envs "${NUM_ENVS:-64}" --rounds "${ROUNDS:-2}" \
    --steps "${STEPS:-100000}" --soft-q-steps "${SOFT_Q_STEPS:-20000}" \
    --agents ${AGENTS:-a3c a3c+groups1 a3c+bf16 soft-q soft-q+bf16}
