#!/bin/bash
# Re-captures the text screens in docs/screens/ from the release binary on the
# lighthouse prompt (default model), driving the inspector through tmux.
# Usage: docs/scripts/capture-screens.sh   (after `cargo build --release`)
set -u
cd "$(dirname "$0")/../.."
BIN=./target/release/kvscope
PROMPT=sample-prompts/lighthouse-needle.txt
OUT=docs/screens

# capture NAME WIDTH HEIGHT WAIT_AFTER(yes|no) KEYS...
capture() {
  local name=$1 w=$2 h=$3 settle=$4; shift 4
  tmux kill-session -t cap 2>/dev/null
  tmux new-session -d -s cap -x "$w" -y "$h" "$BIN $PROMPT ${ARGS:-}; sleep 5"
  for _ in $(seq 1 120); do
    sleep 0.5
    tmux capture-pane -p -t cap | grep -q '\[ready\]' && break
  done
  for k in "$@"; do tmux send-keys -t cap -- "$k"; sleep 0.1; done
  if [ "$settle" = yes ]; then
    for _ in $(seq 1 120); do
      sleep 0.5
      tmux capture-pane -p -t cap | grep -q '\[ready\]' && break
    done
  fi
  tmux capture-pane -p ${COLOURS:+-e} -t cap > "$OUT/$name.txt"
  tmux send-keys -t cap q
  sleep 0.5
  tmux kill-session -t cap 2>/dev/null
  echo "captured $OUT/$name.txt"
}

# L14 h3 selected in the head map (Down moves the head, Right the layer).
SEL=(Down Down Down $(printf 'Right %.0s' $(seq 1 14)))
capture full-160x45 160 45 yes "${SEL[@]}"
capture attention-zoomed-160x45 160 45 yes "${SEL[@]}" z z
capture budgets-manual-160x45 160 45 yes 3 Down Down - - - - Down Up Up Up + +
capture help 160 45 yes "${SEL[@]}" '?'
capture stale-after-budget-key 160 45 no "${SEL[@]}" b
for n in 1 2 3 4 5 6; do
  capture "tab-100x30-$n" 100 30 yes "$n"
done

# The README's picture: the whole screen with its colours (snapkv at B=128, L14 h3),
# drawn as SVG.
TMPD=$(mktemp -d)
OUT=$TMPD ARGS="--method snapkv" COLOURS=1 capture inspector 160 45 yes "${SEL[@]}"
python3 docs/scripts/ansi-to-svg.py "$TMPD/inspector.txt" docs/img/inspector.svg 160 45
rm -r "$TMPD"
echo "drew docs/img/inspector.svg"
