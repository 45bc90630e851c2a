#!/usr/bin/env bash
# BENCHMARKS.md's one-lease throughput table (issue 31): every vision and text row, sot_jax against the official
# PyTorch code eager and torch.compile'd, each row in its own process, one after another on one GPU (nothing runs
# beside a row; LANES below spreads them over several). Each result is written to STATE as it finishes; a row whose
# JSON is already in STATE is skipped, so the same command again on the same machine goes on where the last one
# stopped. A row is left for the next call when its estimated seconds exceed what is left before DEADLINE_SECONDS
# (later, shorter rows still run).
# Usage, from the repository root, with the official checkouts and their pinned timm unpacked under REFS:
#   bench/results/issue31_table.sh STATE_DIR DEADLINE_SECONDS [REFS]
# REFS (default .refs) holds SoT (jiangtaoxie/SoT), HVT (zhuang-group/HVT), TokenLabeling (zihangJiang/
# TokenLabeling), cokezrr_transformers (its src/model, src/normalization and src/representation: the official SoT
# text head) and timm_0.3.4, timm_0.3.2, timm_0.4.5 (each wheel unzipped). With $OUT set, STATE's results
# (rows.jsonl), the log and the device's versions are copied there after every row. With ONLY="NAME ...", only
# those rows run; ONLY=table runs the table's 42 rows and the matmul peak, ONLY=vision its 18 vision rows and
# ONLY=text its 24 text rows (each with the peak: halves that each fit one session's device time), ONLY=done the 33
# rows that issue 31's "done when" names (every vision row; BERT at 256 and 32 and GPT-2 at 32 against HF's heads and
# the official SoT head, not sot_jax's baseline-head rows); VARIANTS="NAME ..." names the package copies under REFS
# that the variant rows run.
# With LANES=N (a machine of N GPUs), N rows run side by side, each alone on its GPU (CUDA_VISIBLE_DEVICES) and its
# 1/N of the CPU cores (taskset), and the matmul peak is measured on every GPU; each row's JSON names its GPU.
# A table longer than one device call (10 minutes) runs detached, so that no row waits for the next call. Each call
# of the lease runs the same two commands (the first starts the table, later ones find it started) and carries REFS
# again (a call without it left the device without REFS while rows still ran):
#   bench/results/issue31_table.sh --detach STATE DEADLINE [REFS]   # starts the table in its own session, once
#   bench/results/issue31_table.sh --watch STATE SECONDS            # STATE's rows to $OUT until done or SECONDS
set -u
copy_back() {  # STATE's results so far (in the order they finished), its log, the device's versions and the rows'
  # stderr tails, to $OUT (what comes back even when the call times out)
  ls -tr "$1"/*.json 2>/dev/null | xargs -r cat >"${OUT:?}/rows.jsonl"
  cp "$1/log.txt" "$1/device.txt" "$OUT/" 2>/dev/null
  tail -n 40 "$1"/*.err >"$OUT/stderr_tails.txt" 2>/dev/null
  return 0
}
case "${1:-}" in
  --detach)
    shift
    mkdir -p "${1:?STATE_DIR}"
    [ -e "$1/started" ] && exit 0
    touch "$1/started"
    OUT= setsid nohup bash -c 'bash "$0" "$@"; touch "$1/done"' "$0" "$@" </dev/null >/dev/null 2>&1 &
    exit 0 ;;
  --watch)
    end=$((SECONDS + ${3:?SECONDS}))
    until [ -e "${2:?STATE_DIR}/done" ] || [ "$SECONDS" -ge "$end" ]; do copy_back "$2"; sleep 10; done
    copy_back "$2"
    tail -n 5 "$2/log.txt"
    exit 0 ;;
esac
PYTHON=${PYTHON:-python3}
state=${1:?STATE_DIR}
deadline=$((SECONDS + ${2:?DEADLINE_SECONDS}))
refs=$(realpath "${3:-.refs}")
mkdir -p "$state"
export PYTHONPATH=.:bench${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
unset XLA_FLAGS
# One JAX compilation cache per table (JAX then also keeps XLA's per-fusion autotuning results in it): rows whose
# models share layers (the three SoT stems, BERT with and without its head) take the kernel choices autotuned for
# the first of them instead of timing the same candidates again. It shortens compilation only.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(realpath "$state")/jax_cache}
log=$state/log.txt
exec > >(tee -a "$log") 2>&1

if [ ! -s "$state/device.txt" ]; then
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PYTHON" -c 'import sys, jax, flax, optax, torch, transformers, timm
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)
print("torch", torch.__version__, "transformers", transformers.__version__, "timm (DeiT-S)", timm.__version__)'
  } >"$state/device.txt" 2>&1
fi
echo "=== call at $(date -u +%T), deadline in $((deadline - SECONDS)) s"

lanes=${LANES:-1}
read -ra cores <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"  # the CPUs rows may use
cores_per_lane=$((${#cores[@]} / lanes))
lane_pids=()
pin=()  # the row's CPU pinning: none with one lane
free_lane() {  # [GPU]: sets lane to GPU (default: any GPU) once no row runs there
  local first=${1:-0} last=${1:-$((lanes - 1))}
  while :; do
    for ((lane = first; lane <= last; lane++)); do
      [ -n "${lane_pids[lane]:-}" ] && kill -0 "${lane_pids[lane]}" 2>/dev/null || return 0
    done
    sleep 1
  done
}

run_row() {  # NAME TIMEOUT COMMAND...: the command's last JSON line (RESULT prefix dropped) to STATE/NAME.json
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "${pin[@]}" env "$@" >"$state/$name.out" 2>"$state/$name.err"
  local rc=$?
  local line
  line=$(grep -E '^(RESULT )?\{' "$state/$name.out" | tail -1 | sed 's/^RESULT //')
  if [ "$rc" -eq 0 ] && [ -n "$line" ]; then
    python3 -c 'import json, sys; row = json.loads(sys.argv[1]); row.update(variant=sys.argv[2], \
wall_s=int(sys.argv[3]), finished=sys.argv[4]); row.update(gpu=int(sys.argv[5])) if sys.argv[5] else None; \
print(json.dumps(row))' "$line" "$name" "$((SECONDS - start))" "$(date -u +%T)" "${CUDA_VISIBLE_DEVICES:-}" \
      >"$state/$name.json"
    echo "$name: $((SECONDS - start)) s: $(head -c 300 "$state/$name.json")"
  else
    echo "$name: failed rc=$rc after $((SECONDS - start)) s: $(grep -E 'Error|error' "$state/$name.err" | tail -2)"
  fi
}

table=1  # 0 from the extra rows on (ONLY=table, vision and text stop there)
row() {  # NAME ESTIMATE TIMEOUT COMMAND...: run_row, at once or (LANES > 1) on the next free GPU in the background
  local name=$1 estimate=$2 limit=$3
  shift 3
  [ -s "$state/$name.json" ] && return
  if [[ "${ONLY:-}" =~ ^(table|vision|text|done)$ ]]; then
    [ "$table" = 1 ] || return
    local group=vision
    case $name in bert_* | gpt2_*) group=text ;; matmul_peak*) group=$ONLY ;; esac
    case $name in *_jax_plain | gpt2_b256_*) [ "$ONLY" = done ] && return ;; esac
    [ "$ONLY" = table ] || [ "$ONLY" = done ] || [ "$ONLY" = "$group" ] || return
  elif [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
    return
  fi
  local left=$((deadline - SECONDS))
  if [ "$estimate" -gt "$left" ]; then echo "$name: left for the next call (estimate ${estimate} s, ${left} s left)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$lanes" = 1 ]; then
    run_row "$name" "$limit" "$@"
  else
    local gpu=
    case $name in matmul_peak) gpu=0 ;; matmul_peak_gpu*) gpu=${name#matmul_peak_gpu} ;; esac
    free_lane $gpu
    local lane_cores=("${cores[@]:lane * cores_per_lane:cores_per_lane}")
    (
      export CUDA_VISIBLE_DEVICES=$lane
      pin=(taskset -c "$(IFS=,; echo "${lane_cores[*]}")")
      run_row "$name" "$limit" "$@"
    ) &
    lane_pids[lane]=$!
  fi
  [ -z "${OUT:-}" ] || copy_back "$state"
}

jax_vision() {  # NAME ESTIMATE TIMEOUT MODEL [ARGS...]: the full sot_jax train step, batch 256
  local name=$1 estimate=$2 limit=$3 model=$4
  shift 4
  row "$name" "$estimate" "$limit" "$PYTHON" bench/train_throughput.py --one "$model" --batch 256 --steps 10 --no-eval "$@"
}

torch_vision() {  # NAME ESTIMATE TIMEOUT REFERENCE REPO TIMM [--compile]: bench/torch_reference.py, batch 256
  local name=$1 estimate=$2 limit=$3 reference=$4 repo=$5 timm=$6
  shift 6
  local official=()
  [ -n "$repo" ] && official=(--official-repo "$refs/$repo")
  row "$name" "$estimate" "$limit" ${timm:+PYTHONPATH=$refs/$timm:$PYTHONPATH} "$PYTHON" bench/torch_reference.py \
    --model "$reference" "${official[@]}" --batch 256 --steps 10 "$@"
}

text() {  # NAME ESTIMATE TIMEOUT FRAMEWORK VARIANT BATCH [ARGS...]: bench/text_throughput.py, seq 128
  local name=$1 estimate=$2 limit=$3
  shift 3
  row "$name" "$estimate" "$limit" "$PYTHON" bench/text_throughput.py --one "$1" "$2" "$3" --steps 10 "${@:4}"
}

text_like_for_like() {  # MODEL BATCH: sot_jax's baseline head against HF's (the table's rows), and HF's encoder
  # under the official SoT text head (REFS/cokezrr_transformers) against sot_jax's SoT rows
  local family=${1%%_*} official=(--official-repo "$refs/cokezrr_transformers")
  text "${family}_b$2_jax_plain" 60 200 jax "$1" "$2"
  text "${family}_b$2_torch_sot_eager" 30 150 torch "${family}_sot:eager" "$2" "${official[@]}"
  text "${family}_b$2_torch_sot_compile" 90 300 torch "${family}_sot:compile" "$2" "${official[@]}"
}

row matmul_peak 20 90 "$PYTHON" bench/train_throughput.py --peak
for ((gpu = 1; gpu < lanes; gpu++)); do  # the same GPU model, measured on each lane
  row "matmul_peak_gpu$gpu" 20 90 "$PYTHON" bench/train_throughput.py --peak
done
jax_vision deit_s_jax 45 150 deit_small_patch16_224 --profile "$state/profile_deit_s"
torch_vision deit_s_torch_eager 40 150 deit_small_patch16_224 "" ""
torch_vision deit_s_torch_compile 100 300 deit_small_patch16_224 "" "" --compile
jax_vision sot_small_jax 140 300 sot_small
torch_vision sot_small_torch_eager 50 150 SoT_Small SoT timm_0.3.4
torch_vision sot_small_torch_compile 120 300 SoT_Small SoT timm_0.3.4 --compile
text bert_b256_jax 70 240 jax bert_base_sot 256
text bert_b256_torch_eager 40 150 torch eager 256
text bert_b256_torch_compile 90 300 torch compile 256
text_like_for_like bert_base 256
text bert_b32_jax 60 200 jax bert_base_sot 32
text bert_b32_torch_eager 30 150 torch eager 32
text bert_b32_torch_compile 90 300 torch compile 32
text_like_for_like bert_base 32
text gpt2_b32_jax 60 200 jax gpt2_sot 32
text gpt2_b32_torch_eager 30 150 torch gpt2:eager 32
text gpt2_b32_torch_compile 90 300 torch gpt2:compile 32
text_like_for_like gpt2 32
jax_vision hvt_s_1_jax 45 150 hvt_s_1
torch_vision hvt_s_1_torch_eager 40 150 hvt_s_1 HVT timm_0.3.2
torch_vision hvt_s_1_torch_compile 100 300 hvt_s_1 HVT timm_0.3.2 --compile
jax_vision lvvit_s_jax 70 200 lvvit_s
torch_vision lvvit_s_torch_eager 45 150 lvvit_s TokenLabeling timm_0.4.5
jax_vision sot_tiny_jax 140 300 sot_tiny
torch_vision sot_tiny_torch_eager 45 150 SoT_Tiny SoT timm_0.3.4
torch_vision sot_tiny_torch_compile 120 300 SoT_Tiny SoT timm_0.3.4 --compile
jax_vision sot_base_jax 160 320 sot_base
torch_vision sot_base_torch_eager 55 150 SoT_Base SoT timm_0.3.4
torch_vision sot_base_torch_compile 130 300 SoT_Base SoT timm_0.3.4 --compile
# Last of the rows that "done when" names: torch.compile made the official LV-ViT slower than eager in every lease
# so far.
torch_vision lvvit_s_torch_compile 120 300 lvvit_s TokenLabeling timm_0.4.5 --compile
# GPT-2 at batch 256 after them.
text gpt2_b256_jax 60 200 jax gpt2_sot 256
text gpt2_b256_torch_eager 30 150 torch gpt2:eager 256
text gpt2_b256_torch_compile 90 300 torch gpt2:compile 256
text_like_for_like gpt2 256
table=0
# Extra rows (levers), predictions in BENCHMARKS.md written before the run.
text bert_b256_jax_attention_dropout0 70 240 jax bert_base_sot:attention_dropout=0 256
row bert_b256_jax_rbg 70 240 JAX_DEFAULT_PRNG_IMPL=rbg "$PYTHON" bench/text_throughput.py --one jax bert_base_sot 256 \
  --steps 10
# The same rows with other copies of the package: REFS/NAME/sot_jax for each NAME in VARIANTS (default "before", the
# package at the commit before the change being measured; BENCHMARKS.md names each round's copies), and round five's
# bound (hidden and embedding dropouts off).
for variant in ${VARIANTS:-before}; do
  row "deit_s_jax_$variant" 45 150 PYTHONPATH="$refs/$variant:bench" "$PYTHON" bench/train_throughput.py \
    --one deit_small_patch16_224 --batch 256 --steps 10 --no-eval
  for model in bert_base_sot gpt2_sot; do
    row "${model%%_*}_b256_jax_$variant" 70 240 PYTHONPATH="$refs/$variant:bench" "$PYTHON" \
      bench/text_throughput.py --one jax "$model" 256 --steps 10
  done
done
text bert_b256_jax_dropout0 70 240 jax bert_base_sot:dropout=0 256
# Round five's flag candidates (issue 31, item 1), each with sot_jax's defaults added (xla_defaults keeps the
# user's flags) and compared with the same model's default row of the same lease: cuBLASLt GEMMs (bias
# epilogues) and command buffers off.
for flags in cublaslt:--xla_gpu_enable_cublaslt=true no_command_buffer:--xla_gpu_enable_command_buffer=; do
  row "deit_s_jax_${flags%%:*}" 45 150 XLA_FLAGS="${flags#*:}" "$PYTHON" bench/train_throughput.py \
    --one deit_small_patch16_224 --batch 256 --steps 10 --no-eval
  row "bert_b256_jax_${flags%%:*}" 70 240 XLA_FLAGS="${flags#*:}" "$PYTHON" bench/text_throughput.py \
    --one jax bert_base_sot 256 --steps 10
done
# Profiles of BERT b256 (command buffers off for JAX) and the cuDNN bound (text_throughput.py's bound=cudnn).
text bert_b256_jax_profile 90 240 jax bert_base_sot 256 --profile "$state/profile_bert"
text bert_b256_torch_compile_profile 60 300 torch compile 256 --profile "$state/profile_bert"
text bert_b256_jax_bound_cudnn 70 240 jax bert_base_sot:bound=cudnn 256
for pid in "${lane_pids[@]}"; do wait "$pid"; done
echo "=== call done at $(date -u +%T), $((deadline - SECONDS)) s before the deadline"
[ -z "${OUT:-}" ] || copy_back "$state"
