#!/usr/bin/env bash
# Branch coverage of vLLM 0.32.0's own tests/v1/core over the installed vllm/v1/core (the
# "Engine branch coverage" table in docs/search.md): run from the repository root after the test command set up .venv-vllm.
# About 21 minutes on 2 cores. Writes $OUT/unit-tests.json (coverage json) and $OUT/junit.xml.
set -euo pipefail
V=$PWD/.venv-vllm/bin; OUT=${OUT:-/tmp/vllm-unit-coverage}; HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p $OUT
SRC=$($V/python -c "import vllm,os;print(os.path.dirname(vllm.__file__))")/v1/core
$V/pip install -q coverage                                  # 7.17.5 was used
$V/pip install -q --no-deps --target /tmp/vllm-extra tblib  # tests/conftest.py imports it; kept out of the venv
mkdir -p /tmp/vsd /tmp/vsrc && cd /tmp/vsd
curl -sSfLO https://files.pythonhosted.org/packages/d5/df/5471312c76e335eaa2b8333e87ea39f0d37bfe24f10a582620e34ff12e33/vllm-0.32.0.tar.gz
tar xzf vllm-0.32.0.tar.gz -C /tmp/vsrc                     # PyPI sdist of vllm 0.32.0 (commit g5df63a720), ships tests/
rm -rf /tmp/vllm-tests && mkdir -p /tmp/vllm-tests && cp -a /tmp/vsrc/vllm-0.32.0/tests /tmp/vllm-tests/
printf '[pytest]\nmarkers =\n    slow_test\n    skip_global_cleanup\n    core_model\n    hybrid_model\n    cpu_model\n    cpu_test\n    split\n    distributed\n    optional\n' > /tmp/vllm-tests/pytest.ini
# Offline HF cache with only config.json for the two models the scheduler/kv-cache helpers build ModelConfig from
for m in facebook--opt-125m Qwen--Qwen3-0.6B; do
  d=/tmp/vllm-hf/hub/models--$m; r=$(printf '%040d' 1); mkdir -p $d/refs $d/snapshots/$r
  printf $r > $d/refs/main; cp $HERE/$m.config.json $d/snapshots/$r/config.json; done
cd /tmp/vllm-tests && rm -f $OUT/.coverage
env -u FUZZCACHE_VLLM_PLANT PYTHONPATH=/tmp/vllm-extra VLLM_TARGET_DEVICE=cpu HF_HOME=/tmp/vllm-hf \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  $V/python -m coverage run --rcfile=/dev/null --branch --source=$SRC --data-file=$OUT/.coverage \
  -m pytest tests/v1/core -q -p no:cacheprovider -p no:fuzzcache -rfEs --junitxml=$OUT/junit.xml || true
$V/python -m coverage json --rcfile=/dev/null --data-file=$OUT/.coverage -o $OUT/unit-tests.json
