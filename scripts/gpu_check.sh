#!/bin/bash
# Run trimtab's training, evaluation, generation and serving tests on a CUDA machine.
#
#   bash scripts/gpu_check.sh OUT_DIR
#
# Every test picks CUDA by itself when torch sees a GPU (training, eval and the serving pool
# choose "cuda" when available), so the same suite that CI runs on CPU exercises the CUDA
# paths here. Python packages the machine lacks may travel as wheels in .whl/ (see
# docs/gpu.md): they are installed into /tmp/site first. The log and a JUnit XML go to
# OUT_DIR.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
{
  nvidia-smi -L
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
} 2>&1 | tee "$out/device.txt"
timeout "${GPU_TEST_SECONDS:-420}" python3 -m pytest -q -p no:cacheprovider \
  --junitxml "$out/junit.xml" --durations 15 \
  tests/training tests/evaluation tests/generation tests/server tests/methods tests/models \
  2>&1 | tee "$out/pytest.log" | tail -60
