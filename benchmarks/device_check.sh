#!/usr/bin/env bash
# The prepared GPU check (issue 10, §5; recipes_bf16 from issue 14, §3): one run of ~8 minutes on one H200
# that writes every result under benchmarks/results/device_check/ (or OUT_DIR):
#   cuda_tests.xml / .txt        pytest -m cuda (mixed precision, SyncBatchNorm under DDP, MST on CUDA)
#   vs_peers_base224.json / .txt mimreg vs lightly vs the reference MAE, ViT-B/16 224 px bf16 batch 128
#   vs_peers_tiny32.json / .txt  the same at ViT-Tiny/4 32 px batch 1024, with mimreg-compile (inductor)
#   data_pipeline.json / .txt    the device data path's img/s against the loader path
#   mst.json / .txt              the MST at n=4096 on CUDA against scipy and the distance matrix
#   finetune.json / .txt         `mimreg eval finetune` in bf16 on every GPU (2 processes where there
#                                are 2), uninterrupted and halted + resumed: losses, equality, seconds
#   pretrain.json / .txt         `mimreg pretrain` of ViT-Tiny/4 MAE on 50,000 synthetic CIFAR-sized
#                                images through the device path for ~3 minutes (img/s end to end,
#                                epochs per minute, peak GPU memory)
#   recipes_bf16.txt, recipes_bf16/results.json
#                                every recipe for 2 steps on CUDA in bf16 (vit_micro, 32 px), halted
#                                after step 1 and resumed (tests/smoke_worker.py): errors, last loss,
#                                how far the resumed weights are from the uninterrupted run's
#   summary.json                 each section's exit code and seconds (benchmarks/run_sections.py)
# A section that fails or passes its time limit is recorded and the others still run; the script
# exits 1 if any failed.
#
#   bash benchmarks/device_check.sh [--smoke] [--out DIR]
#
# --smoke runs the same sections on the CPU at tiny sizes (one round, in one interpreter), into --out or
# $DEVICE_CHECK_OUT (default: a fresh temporary folder), never into benchmarks/results. Environment:
# PYTHON (default: python), PRETRAIN_SECONDS (default 140).
set -uo pipefail

cd "$(dirname "$0")/.."
SMOKE=0
OUT="${DEVICE_CHECK_OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --out) OUT="$2"; shift ;;
        *) echo "device_check.sh: unknown argument $1 (use --smoke, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$OUT" ]; then
    if [ "$SMOKE" = 1 ]; then OUT="$(mktemp -d)"; else OUT="benchmarks/results/device_check"; fi
fi
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [ "$SMOKE" = 1 ]; then
    export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
    TESTS=(tests/engine/test_gpu_switches.py)
    PEER_COMMON=(--device cpu --precision fp32 --rounds 1 --steps 1 --warmup 1 --threads 1 --gemm-n 128)
    BASE=(--preset base224 --arch vit_micro --img-size 64 --batch 4 --impls mimreg,lightly,reference)
    TINY=(--preset tiny32 --arch vit_micro --batch 8 --impls mimreg,lightly,reference)
    DATA=(--device cpu --batch 16 --rounds 1 --cases mae)
    MST=(--device cpu --sizes 64 --dims 16 --repeats 1)
    FINETUNE=(--device cpu --precision fp32 --processes 1 --epochs 2)
    PRETRAIN=(--device cpu --seconds 2 --train-images 256 --test-images 64 --batch 32
              --set model.arch=vit_micro --set train.precision=fp32 --set monitor=[] --set train.knn_every=0
              --set train.online_probe=false)
    RECIPES=(bf16 mae msn)  # two recipes on the CPU in bf16: the section's plumbing
else
    TESTS=(tests)
    PEER_COMMON=(--device cuda --precision bf16 --rounds 3 --steps 3 --warmup 3)
    BASE=(--preset base224 --batch 128 --impls mimreg,lightly,reference)
    TINY=(--preset tiny32 --batch 1024 --impls mimreg,mimreg-compile,lightly,reference)
    DATA=(--device cuda --batch 256 --rounds 3 --threads 4 --cases "mae,simclr (2 views)")  # the loader side is PIL
    MST=(--device cuda --sizes 4096 --dims 256 --repeats 3 --scipy-repeats 2)
    FINETUNE=(--device cuda --precision bf16)  # 2 processes where there are 2 GPUs
    PRETRAIN=(--device cuda --seconds "${PRETRAIN_SECONDS:-140}" --batch 1024 --set train.precision=bf16
              --set train.log_every=20)  # a logged step reads its losses (a host sync)
    RECIPES=(cuda-bf16)  # every recipe
fi

S=(::)  # section separator of run_sections.py: NAME SECONDS TARGET ARGS...
SECTIONS=(
    cuda_tests 150 -m pytest -m cuda "${TESTS[@]}" -q -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" "${S[@]}"
    vs_peers_base224 120 benchmarks/vs_peers.py "${BASE[@]}" "${PEER_COMMON[@]}" --json "$OUT/vs_peers_base224.json" "${S[@]}"
    vs_peers_tiny32 240 benchmarks/vs_peers.py "${TINY[@]}" "${PEER_COMMON[@]}" --json "$OUT/vs_peers_tiny32.json" "${S[@]}"
    data_pipeline 90 benchmarks/data_pipeline.py "${DATA[@]}" --json "$OUT/data_pipeline.json" "${S[@]}"
    mst 60 benchmarks/mst.py "${MST[@]}" --json "$OUT/mst.json" "${S[@]}"
    finetune 150 benchmarks/finetune_check.py "${FINETUNE[@]}" --work "$OUT/finetune_work" --json "$OUT/finetune.json" "${S[@]}"
    pretrain 300 benchmarks/pretrain_throughput.py "${PRETRAIN[@]}" --work "$OUT/pretrain_work" --json "$OUT/pretrain.json" "${S[@]}"
    recipes_bf16 300 tests/smoke_worker.py "$OUT/recipes_bf16" "${RECIPES[@]}"
)
MODE=()
[ "$SMOKE" = 1 ] && MODE=(--in-process)  # one interpreter: torch and timm start once
"$PY" benchmarks/run_sections.py --out "$OUT" "${MODE[@]}" -- "${SECTIONS[@]}"
CODE=$?
rm -rf "$OUT/pretrain_work/data"  # the generated images (150 MB at full size)
[ "$SMOKE" = 1 ] || rm -rf "$OUT/finetune_work"  # its checkpoints are not results
# the run's checkpoints are not results (the smoke test looks at them in its temporary folder)
[ "$SMOKE" = 1 ] || rm -rf "$OUT/pretrain_work/run/checkpoints" "$OUT"/recipes_bf16/*/
exit $CODE
