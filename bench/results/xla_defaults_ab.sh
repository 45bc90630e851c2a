#!/usr/bin/env bash
# BENCHMARKS.md's "XLA defaults (measured)" table: each variant in its own process, one after another (pairs
# adjacent), each result written as it finishes. A variant whose JSON is already in STATE is skipped, so a second
# call on the same machine finishes the list. Usage, from the repository root:
#   bench/results/xla_defaults_ab.sh STATE_DIR DEADLINE_SECONDS
# "before": --no-xla-defaults (XLA_FLAGS as given, here empty); "after": sot_jax.xla_defaults applied; the PRNG
# variants: the defaults plus JAX_DEFAULT_PRNG_IMPL (threefry2x32 is JAX's default).
set -u
PYTHON=${PYTHON:-python3}
state=${1:?STATE_DIR}
deadline=$((SECONDS + ${2:?DEADLINE_SECONDS}))
mkdir -p "$state"
export PYTHONPATH=.:bench${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
unset XLA_FLAGS

vision() {  # NAME TIMEOUT MODEL [ARGS...]: bench/train_throughput.py --one, batch 256
  local name=$1 limit=$2 model=$3
  shift 3
  run "$name" "$limit" "$PYTHON" bench/train_throughput.py --one "$model" --batch 256 --steps 10 --no-eval "$@"
}

text() {  # NAME TIMEOUT [ARGS...]: bench/text_throughput.py, BERT-base + SoT at batch 32
  local name=$1 limit=$2
  shift 2
  run "$name" "$limit" "$PYTHON" bench/text_throughput.py --one jax bert_base_sot 32 --steps 10 "$@"
}

run() {  # NAME TIMEOUT COMMAND...: the command's last JSON line (RESULT prefix dropped) to STATE/NAME.json
  local name=$1 limit=$2
  shift 2
  [ -s "$state/$name.json" ] && return
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then echo "$name: skipped (${left} s left)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  timeout "$limit" env ${PRNG:+JAX_DEFAULT_PRNG_IMPL=$PRNG} "$@" >"$state/$name.out" 2>"$state/$name.err"
  local rc=$?
  local line
  line=$(grep -E '^(RESULT )?\{' "$state/$name.out" | tail -1 | sed 's/^RESULT //')
  if [ "$rc" -eq 0 ] && [ -n "$line" ]; then
    python3 -c 'import json, sys; row = json.loads(sys.argv[1]); row.update(variant=sys.argv[2], \
wall_s=int(sys.argv[3]), prng=sys.argv[4] or "threefry2x32"); print(json.dumps(row))' \
      "$line" "$name" "$((SECONDS - start))" "${PRNG:-}" >"$state/$name.json"
    cat "$state/$name.json"
  else
    echo "$name: failed rc=$rc after $((SECONDS - start)) s: $(grep -E 'Error|error' "$state/$name.err" | tail -2)"
  fi
}

text bert_b32_before 150 --no-xla-defaults
text bert_b32_after 150
vision sot_small_before 240 sot_small --no-xla-defaults
vision sot_small_after 240 sot_small
vision deit_s_before 150 deit_small_patch16_224 --no-xla-defaults
vision deit_s_after 150 deit_small_patch16_224
vision hvt_s_1_before 150 hvt_s_1 --no-xla-defaults
vision hvt_s_1_after 150 hvt_s_1
PRNG=rbg text bert_b32_after_rbg 150
PRNG=unsafe_rbg text bert_b32_after_unsafe_rbg 150
PRNG=rbg vision deit_s_after_rbg 150 deit_small_patch16_224
PRNG=unsafe_rbg vision deit_s_after_unsafe_rbg 150 deit_small_patch16_224
