#!/usr/bin/env bash
# One command on an accelerator: the quickstart, the real-photo recipe
# (configs/biq2021.py) and benchmark_train for stage ST of ResNet-50 +
# Transformer at 224 px in bfloat16 (the step's ceiling, end to end from the
# prepared store through the training loop, and end to end again with
# --input_delay_ms set to the step's own time), all into one JSON.
#
#   pip install -e '.[cuda]'            # jax[cuda12]: JAX's CUDA 12 wheels
#   launch/gpu_check.sh [OUT]           # default runs/gpu_check; writes OUT/gpu_check.json
#
# Environment: PYTHON (default python), BATCH (ST batch, default 256), STEPS
# (timed steps, default 50), BIQ_MANIFEST (default configs/biq2021.py's),
# SMOKE=1 (CPU-sized runs that check the script itself: the tiny quickstart,
# the benchmark on the tiny quickstart's ST; BIQ2021 only with BIQ_MANIFEST,
# e.g. a few rows of its manifest). Targets it reports against (issue 26): end to end >= 90 % of the
# ceiling, ResNet-50 bf16 training >= 7,000 img/s on an H200-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PYTHON:-python}
BATCH=${BATCH:-256}
STEPS=${STEPS:-50}
mkdir -p "$OUT"

if [[ "${SMOKE:-0}" == 1 ]]; then
  QUICK="quickstart:tiny=True"
  BIQ=(--config=biq2021 --config.st.epochs=0.05)
  BENCH=(--config=quickstart:tiny=True --config.stages=st --steps=3 --workers=0)
else
  QUICK="quickstart"
  BIQ=(--config=biq2021)
  BENCH=(--config=mliq:img=resnet50,txt=transformer --config.stages=st
         --config.model.dtype=bfloat16 --config.input.image_size=224
         --config.input.resize_size=256 --config.input.store=prepared
         --config.st.batch_size="$BATCH" --steps="$STEPS")
fi
if [[ -n "${BIQ_MANIFEST:-}" ]]; then
  BIQ[0]="--config=biq2021:manifest=$BIQ_MANIFEST"
fi

timed() {  # name, command...: runs it, logs to OUT/name.log, records seconds
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*" >&2
  "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed: see $OUT/$name.log" >&2; return 1; }
  echo $((SECONDS - t0)) > "$OUT/$name.seconds"
}

$PY -c 'import jax, json; print(json.dumps(dict(jax=jax.__version__,
  backend=jax.default_backend(), devices=[str(d) for d in jax.devices()])))' \
  > "$OUT/device.json"

timed quickstart $PY launch/train.py --config="$QUICK" --workdir="$OUT/quickstart"
timed quickstart_eval $PY launch/evaluate.py --workdir="$OUT/quickstart"

biq_manifest=$($PY -c 'import sys; from bmqa_jax.configs import biq2021 as b
c = b.get_config(sys.argv[1].partition(":")[2] or None); print(c.data.manifest)' \
  "${BIQ[0]#--config=}")
if [[ "${SMOKE:-0}" == 1 && -z "${BIQ_MANIFEST:-}" ]]; then
  echo "biq2021: skipped in SMOKE=1 without BIQ_MANIFEST" >&2
elif [[ -f "$biq_manifest" ]]; then
  timed biq2021 $PY launch/train.py "${BIQ[@]}" --workdir="$OUT/biq2021"
  timed biq2021_eval $PY launch/evaluate.py --workdir="$OUT/biq2021"
else
  echo "biq2021: no photos at $biq_manifest (BIQ_MANIFEST=...): skipped" >&2
fi

timed bench_ceiling $PY launch/benchmark_train.py "${BENCH[@]}" --json="$OUT/bench.json"
# The delay: the step's own time (batch / ceiling images/s), so that a loop
# that waits for each batch would get about half the ceiling.
delay=$($PY -c 'import json, sys; r = [r for r in json.load(open(sys.argv[1]))
  if "synthetic_images_per_s" in r][-1]
print(round(1000 * r["batch"] / r["synthetic_images_per_s"], 2))' "$OUT/bench.json")
timed bench_delay $PY launch/benchmark_train.py "${BENCH[@]}" --input_delay_ms="$delay" \
  --json="$OUT/bench_delay.json"

$PY - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
read = lambda name: json.load(open(os.path.join(out, name)))
seconds = lambda name: (int(open(os.path.join(out, name + ".seconds")).read())
                        if os.path.exists(os.path.join(out, name + ".seconds")) else None)
def metrics(workdir):
  path = os.path.join(out, workdir, "eval", "metrics.json")
  return read(os.path.join(workdir, "eval", "metrics.json"))["overall"] if os.path.exists(path) else None
stage = lambda rows: [r for r in rows if "synthetic_images_per_s" in r][-1]
plain, delayed = stage(read("bench.json")), stage(read("bench_delay.json"))
result = dict(
    device=read("device.json"),
    quickstart=dict(train_s=seconds("quickstart"), metrics=metrics("quickstart")),
    biq2021=dict(train_s=seconds("biq2021"), metrics=metrics("biq2021")),
    benchmark_st=dict(
        ceiling_images_per_s=plain["synthetic_images_per_s"],
        e2e_images_per_s=plain["e2e_images_per_s"],
        e2e_of_ceiling=plain["e2e_of_ceiling"],
        input_delay_ms=delayed["input_delay_ms"],
        delayed_e2e_images_per_s=delayed["e2e_images_per_s"],
        delayed_e2e_of_ceiling=delayed["e2e_of_ceiling"],
        rows=dict(plain=plain, delayed=delayed)),
    targets=dict(e2e_of_ceiling_ge_0_9=plain["e2e_of_ceiling"] >= 0.9,
                 resnet50_bf16_ge_7000_images_per_s=plain["synthetic_images_per_s"] >= 7000))
with open(os.path.join(out, "gpu_check.json"), "w") as f:
  json.dump(result, f, indent=1)
print(json.dumps({k: result[k] for k in ("device", "benchmark_st", "targets")}, indent=1)[:3000])
EOF
echo "wrote $OUT/gpu_check.json" >&2
