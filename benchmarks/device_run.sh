#!/usr/bin/env bash
# Every H200 figure of issue 20 in one run, each measurement under its own timeout, all output
# teed into $OUT/device_run.log, the key lines into $OUT/summary.txt (and printed last), the
# profile's trace as $OUT/profile_trace.json.gz. The whole run keeps to TOTAL_S (420 s) by
# shortening or skipping the last steps.
#
#   benchmarks/device_run.sh            # on the device machine (a `run` call with carry [".whl"])
#   benchmarks/device_run.sh --smoke    # the same steps end to end at tiny sizes (a CPU check)
#
# Steps: versions; the cp312 wheels of .whl/ into $SITE (what the device image lacks; flax, optax
# and orbax-checkpoint from .whl/fallback/ only where the image's are outside setup.cfg's ranges);
# an import check; the bundled PTB-XL sample built once; (1) the Base pre-training step, ours
# against the released PyTorch step (amp and bf16), with MFU over all positions and over real
# words; (2) the same step fed by the input pipeline (`--from_pipeline`, where that flag exists);
# (3) VQ-HBR, linear-probe and fine-tuning steps; (5) a profile of 5 Base steps; (6) the
# released-weight check in float32 and bfloat16; (4) the largest Base and Large batch that fits.
# .whl/ also carries the released code (.whl/reference/heartlang-released and timm_shim), linked
# as ../shared/reference where the benchmarks look for it.
#
# Environment: OUT (default /tmp/heartlang_device_run), PY (python3), TORCH_PY (the interpreter
# with torch, default $PY), SITE (/tmp/site), IMAGE_SITE (smoke only: a folder of packages standing
# in for the device image's), TOTAL_S, PEAK_TFLOPS (790), FROM_PIPELINE_ARGS.
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=1
elif [[ -n "${1:-}" ]]; then
  echo "usage: benchmarks/device_run.sh [--smoke]" >&2
  exit 2
fi
OUT=${OUT:-/tmp/heartlang_device_run}
PY=${PY:-python3}
TORCH_PY=${TORCH_PY:-$PY}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/heartlang_device_work}
PEAK_TFLOPS=${PEAK_TFLOPS:-790}
TFDS=$WORK/data/tfds
mkdir -p "$OUT" "$WORK"
LOG=$OUT/device_run.log
SUMMARY=$OUT/summary.txt
: >"$LOG"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1

if ((SMOKE)); then
  TOTAL_S=${TOTAL_S:-2400}
  PRETRAIN_CONFIG=heartlang_jax/configs/pretrain_base.py:tiny
  BATCH=4 STEPS=2 PROFILE_STEPS=2 SEARCH_START=2 SEARCH_CAP=20 TINY=--tiny
  FIXTURE_ARGS="--num_sentences=3"
  PRETRAIN_TIMEOUT=900 STAGE_TIMEOUT=900 CHECK_TIMEOUT=600 PROFILE_TIMEOUT=300 SEARCH_TIMEOUT=300
else
  TOTAL_S=${TOTAL_S:-420}
  PRETRAIN_CONFIG=heartlang_jax/configs/pretrain_base.py
  BATCH=256 STEPS=20 PROFILE_STEPS=5 SEARCH_START=256 SEARCH_CAP=40 TINY=
  FIXTURE_ARGS="--released_sizes --num_sentences=16"
  PRETRAIN_TIMEOUT=150 STAGE_TIMEOUT=110 CHECK_TIMEOUT=100 PROFILE_TIMEOUT=70 SEARCH_TIMEOUT=60
fi
FROM_PIPELINE_ARGS=${FROM_PIPELINE_ARGS:---config=$PRETRAIN_CONFIG --batch=$BATCH --steps=$STEPS --peak_tflops=$PEAK_TFLOPS --real_words_from=$TFDS --from_pipeline}
START=$(date +%s)
export REPO SMOKE OUT PY TORCH_PY SITE WORK PEAK_TFLOPS TFDS FIXTURE_ARGS FROM_PIPELINE_ARGS

# step NAME TIMEOUT_S COMMAND...: runs COMMAND under `timeout`, cut to what is left of TOTAL_S.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((TOTAL_S - ($(date +%s) - START)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    echo "== $name: SKIPPED, the run's ${TOTAL_S}s are spent"
    echo "step $name: skipped (time budget)" >>"$SUMMARY"
    return 99
  fi
  echo "== $name (timeout ${limit}s, at $(($(date +%s) - START))s): $*"
  local begin rc
  begin=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" # bash -c: COMMAND may be a function of this script
  rc=$?
  local status="rc=$rc"
  ((rc == 124 || rc == 137)) && status="TIMED OUT after ${limit}s"
  echo "== $name: $status in $(($(date +%s) - begin))s"
  echo "step $name: $status in $(($(date +%s) - begin))s" >>"$SUMMARY"
  return $rc
}

versions() {
  echo "host=$(hostname) smoke=$SMOKE repo=$REPO python=$($PY -c 'import sys; print(sys.version.split()[0])')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
  $PY - <<'EOF'
import importlib.metadata as metadata

for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "protobuf", "etils", "torch"):
    try:
        print(f"  {name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
}

install_wheels() {
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no wheels in $REPO/.whl: the run call must carry it (carry [\".whl\"])"
    return 1
  fi
  rm -rf "$SITE"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || return 1
  # flax, optax and orbax-checkpoint of the image, unless outside setup.cfg's tested ranges
  local fallback
  if ! fallback=$($PY - <<'EOF'
import importlib.metadata as metadata

from packaging.version import Version

RANGES = {"flax": ("0.12.8", "0.13"), "optax": ("0.2.8", "0.3"), "orbax-checkpoint": ("0.12.8", "0.13")}
for name, (low, high) in RANGES.items():
    try:
        version = Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        version = None
    if version is None or not Version(low) <= version < Version(high):
        print(name.replace("-", "_"))
EOF
  ); then
    echo "could not read the image's flax/optax/orbax-checkpoint versions"
    return 1
  fi
  for name in $fallback; do
    echo "the image's $name is outside setup.cfg's range: installing .whl/fallback/$name-*.whl"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/fallback/"$name"-*.whl || return 1
  done
  if ((SMOKE)); then # the fallback wheels install too (into a throw-away folder)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE.fallback" .whl/fallback/*.whl &&
      echo "fallback wheels install: $(ls .whl/fallback/*.whl | xargs -n1 basename | tr '\n' ' ')" || return 1
    rm -rf "$SITE.fallback"
  fi
  echo "installed into $SITE: $(ls .whl/*.whl | wc -l) wheels${fallback:+ + fallback $fallback}"
}

import_check() {
  $PY - <<'EOF'
import importlib
import importlib.metadata as metadata

modules = [
    "grain", "tensorflow_datasets", "array_record.python.array_record_module", "ml_collections", "wfdb",
    "tensorboardX", "tensorflow_metadata.proto.v0.schema_pb2", "soundfile", "tree",
    "immutabledict", "promise", "simple_parsing", "termcolor", "toml", "portpicker", "importlib_resources",
    "google.api.annotations_pb2", "cffi", "jax", "flax.nnx", "optax", "orbax.checkpoint", "scipy.signal",
    "heartlang_jax.main", "heartlang_jax.stages.pretrain", "heartlang_jax.stages.finetune",
    "heartlang_jax.stages.vqhbr", "heartlang_jax.convert_released", "tfds_ptbxl.catalog",
]
failed = []
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as error:  # every failure is reported, not only the first
        failed.append(f"{name}: {type(error).__name__}: {error}")
for line in failed:
    print(f"IMPORT FAILED {line}")
import jax

print(f"imports: {len(modules) - len(failed)} of {len(modules)} ok; jax {jax.__version__} devices {jax.devices()}")
raise SystemExit(1 if failed else 0)
EOF
}

link_released() {
  # The benchmarks read the released code at ../shared/reference (beside the checkout).
  local have=../shared/reference
  if [[ -f $have/heartlang-released/modeling_pretrain.py ]]; then
    echo "released code at $(cd $have && pwd)/heartlang-released"
    return 0
  fi
  if [[ ! -f .whl/reference/heartlang-released/modeling_pretrain.py ]]; then
    echo "no released code: neither ../shared/reference/heartlang-released nor .whl/reference/heartlang-released"
    return 1
  fi
  mkdir -p $have && ln -sfn "$REPO/.whl/reference/heartlang-released" $have/heartlang-released &&
    ln -sfn "$REPO/.whl/reference/timm_shim" $have/timm_shim &&
    echo "released code linked: $(cd $have && pwd)/heartlang-released -> .whl/reference/heartlang-released"
}

from_pipeline() {
  local output rc
  output=$(timeout --kill-after=10 "$1" $PY benchmarks/pretrain_throughput.py $FROM_PIPELINE_ARGS 2>&1)
  rc=$?
  echo "$output"
  if ((rc != 0)) && grep -q "unrecognized arguments:.*--from_pipeline" <<<"$output"; then
    echo "FROM_PIPELINE: not measured: benchmarks/pretrain_throughput.py of this checkout has no --from_pipeline flag yet"
    return 0
  fi
  return $rc
}

record_fixture() {
  PYTHONPATH=../shared/reference/heartlang-released:../shared/reference/timm_shim:$REPO:${PYTHONPATH:-} \
    CUDA_VISIBLE_DEVICES= $TORCH_PY tools/make_released_fixture.py $FIXTURE_ARGS --out="$WORK/released.npz"
}

main() {
  # IMAGE_SITE (smoke only) stands in for the device image's own packages.
  export PYTHONPATH=$REPO${IMAGE_SITE:+:$IMAGE_SITE}
  step versions 60 versions
  step install_wheels 90 install_wheels || echo "WHEELS: install failed; the image's own packages are used"
  export PYTHONPATH=$REPO:$SITE${IMAGE_SITE:+:$IMAGE_SITE}
  step versions_after_install 60 versions
  step import_check 90 import_check
  step link_released 30 link_released
  step build_dataset 120 $PY -m heartlang_jax.main --config=heartlang_jax/configs/dataset.py --workdir="$WORK/data"
  # (1) ours against the released step, MFU over all positions and over real words
  local ours="benchmarks/pretrain_throughput.py --config=$PRETRAIN_CONFIG --batch=$BATCH --steps=$STEPS"
  ours+=" --peak_tflops=$PEAK_TFLOPS --real_words_from=$TFDS"
  step pretrain_vs_released $PRETRAIN_TIMEOUT $PY $ours --compare_released --released_precisions=amp,bf16 \
    --torch_python="$TORCH_PY" ||
    step pretrain_ours_only $PRETRAIN_TIMEOUT $PY $ours # the released side failed: ours alone
  # (2) the same step fed by the input pipeline and training loop (another issue adds the flag)
  step from_pipeline 100 from_pipeline 90
  # (3) VQ-HBR (released size, K=8192), linear probe (features + head) and full fine-tuning
  step stage_steps $STAGE_TIMEOUT $PY benchmarks/stage_steps.py --stages=vqhbr,linear_probe,finetune \
    --batch=$BATCH --steps=$STEPS $TINY
  # (5) 5 Base steps under the profiler: top 10 ops, attention kernel
  step profile $PROFILE_TIMEOUT $PY benchmarks/profile_step.py --batch=$BATCH --steps=$PROFILE_STEPS $TINY \
    --logdir="$WORK/profile" --copy_trace="$OUT/profile_trace.json.gz"
  if [[ -f $OUT/profile_trace.json.gz ]] && (($(stat -c %s "$OUT/profile_trace.json.gz") > 15 * 2 ** 20)); then
    echo "profile trace over 15 MiB: not sent back" && rm -f "$OUT/profile_trace.json.gz"
  fi
  # (6) converted released weights against the released code's outputs, float32 and bfloat16
  step record_fixture 90 record_fixture &&
    step released_check $CHECK_TIMEOUT $PY benchmarks/released_check_device.py "$WORK/released.npz"
  rm -f "$WORK/released.npz"
  # (4) the largest pre-training batch that fits, Base then Large (a doubling search, time-capped)
  for size in base large; do
    step max_batch_$size $SEARCH_TIMEOUT env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 $PY benchmarks/stage_steps.py \
      --max_batch=$size --batch=$SEARCH_START --time_cap_s=$SEARCH_CAP $TINY
  done
  echo "== done in $(($(date +%s) - START))s (budget ${TOTAL_S}s)"
}

export -f versions install_wheels import_check link_released from_pipeline record_fixture
main 2>&1 | tee -a "$LOG"
{
  echo "==== SUMMARY ($(date -u +%FT%TZ), smoke=$SMOKE)"
  grep -E "^(host=|  (jax|jaxlib|flax|optax|orbax-checkpoint|protobuf|torch)(==|: not)|installed into|fallback wheels|could not read|the image's|IMPORT FAILED|imports:|WHEELS:|released code|FROM_PIPELINE|max_batch size=|attention:|released_check |\[(fp32|fp32_highest|bf16)\] word_ids|trace=|profile:|top [0-9]+ ops|stage=)" "$LOG"
  grep -E "^ +[0-9.]+ ms +[0-9.]+%" "$LOG"
  grep -E "(\| mfu=|mfu_real_words=|^released samples_per_s=|^samples_per_s=|^side_by_side|^  (ours|released) |peak_device_memory=|^== done)" "$LOG" | grep -v -E "^(stage=|profile:)"
  cat "$SUMMARY"
} >"$OUT/summary.tmp"
mv "$OUT/summary.tmp" "$SUMMARY"
cat "$SUMMARY"
