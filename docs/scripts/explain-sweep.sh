#!/usr/bin/env bash
# Runs `kvscope explain --json --rescue K --answer ANSWER` (culprits and rescue at the
# step that writes the start of the expected answer) for every method and the oracle at
# 10% of the cache on the evaluation prompts the full cache answers, and writes one JSON
# report per run to OUT. METHODS="a b" limits the methods.
# Usage: docs/scripts/explain-sweep.sh KVSCOPE_BINARY OUT_DIR [K] [PROMPTS...]
set -euo pipefail
bin=$1; out=$2; k=${3:-8}; shift 3 || shift $#
mkdir -p "$out"
prompts=("$@")
if [ ${#prompts[@]} -eq 0 ]; then
  prompts=(lighthouse-needle needle-harbour-early needle-kitchen-word needle-letters-late needle-distractors-long summary-station)
fi
for p in "${prompts[@]}"; do
  f=sample-prompts/$p.txt
  len=$("$bin" run "$f" --method full --max-new 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["prompt"]["tokens"])')
  b=$(( (len + 5) / 10 )); [ "$b" -lt 8 ] && b=8
  # Rescue at the answer step: the step that writes the start of the expected answer.
  ans=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["answer"])' "sample-prompts/$p.json")
  for m in ${METHODS:-streamingllm h2o snapkv pyramidkv adakv compresskv oracle}; do
    "$bin" explain "$f" --method "$m" --budget "$b" --max-new 24 --rescue "$k" --answer "$ans" --json > "$out/$p.$m.json"
    echo "$p $m budget $b done" >&2
  done
done
