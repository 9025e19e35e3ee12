#!/bin/bash
# Drives the release TUI in tmux: waits for ready, selects a layer whose budget can be
# edited, presses budget keys with pauses, quits, and prints the timing lines.
P=${1:-sample-prompts/needle-letters-late.txt}
# BIN: the kvscope binary (default the release build); EXTRA: more flags (e.g. --model M);
# WAIT: seconds between keys (4); READY_S: most seconds to wait for the prefill (120);
# LAYER: the layer the `-` / `+` edits go to (5: a sliding layer's budget is fixed, and
# Gemma 3's layers 0-4 are sliding, 5 the first global one; any layer of a model without
# sliding layers); LOG: where the timing lines go (a file of this run's own).
BIN=${BIN:-./target/release/kvscope}
LAYER=${LAYER:-5}
LOG=${LOG:-/tmp/tui_timing.$$.log}; rm -f "$LOG"
# A session of this run's own, so two runs at once do not drive each other's.
S=tt$$
tmux kill-session -t $S 2>/dev/null
tmux new-session -d -s $S -x 160 -y 45 "KVSCOPE_TRACE_TIMING=$LOG $BIN $P $EXTRA; sleep 5"
for i in $(seq 1 ${READY_S:-120}); do sleep 1; tmux capture-pane -p -t $S | grep -q '\[ready\]' && break; done
# Focus the Budgets pane (3) and move its layer cursor (from layer 0) to LAYER.
tmux send-keys -t $S 3; sleep 0.5
for i in $(seq 1 $LAYER); do tmux send-keys -t $S Down; sleep 0.3; done
for k in - - - - + + + + / / '*' '*'; do tmux send-keys -t $S -- "$k"; sleep ${WAIT:-4}; done
tmux send-keys -t $S q; sleep 1; tmux kill-session -t $S 2>/dev/null
grep -E "key_to_screen|key_to_divergence|worker_edit" "$LOG"
grep draw_ms "$LOG" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print "draws", NR, "median", a[int(NR/2)], "p90", a[int(NR*0.9)]}'
