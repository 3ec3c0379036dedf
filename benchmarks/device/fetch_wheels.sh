#!/usr/bin/env bash
# Run HERE (a machine with PyPI), from the repository root, before a GPU check on the lent device
# machine: it downloads into .whl/ (ignored by git) the wheels equirl needs there that its image
# lacks (the image has torch, numpy, safetensors, huggingface_hub, tqdm, matplotlib, cloudpickle,
# typing-extensions; not ale-py or gymnasium). Python 3.12 on x86-64 Linux, as the image runs.
# Then: the device tool's run with carry [".whl"] and command "bash benchmarks/device/check.sh".
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl ale-py==0.12.1 gymnasium==1.4.0 farama-notifications==0.0.6
ls -l .whl
