#!/bin/bash
# Drives the release TUI in tmux: waits for ready, presses budget keys with pauses, quits.
P=${1:-sample-prompts/needle-letters-late.txt}
# BIN: the kvscope binary (default the release build); EXTRA: more flags (e.g. --model M);
# WAIT: seconds between keys (4); READY_S: most seconds to wait for the prefill (120).
BIN=${BIN:-./target/release/kvscope}
LOG=/tmp/tui_timing.log; rm -f $LOG
tmux kill-session -t tt 2>/dev/null
tmux new-session -d -s tt -x 160 -y 45 "KVSCOPE_TRACE_TIMING=$LOG $BIN $P $EXTRA; sleep 5"
for i in $(seq 1 ${READY_S:-120}); do sleep 1; tmux capture-pane -p -t tt | grep -q '\[ready\]' && break; done
for k in - - - - + + + + / / '*' '*'; do tmux send-keys -t tt -- "$k"; sleep ${WAIT:-4}; done
tmux send-keys -t tt q; sleep 1; tmux kill-session -t tt 2>/dev/null
grep -E "key_to_screen|key_to_divergence|worker_edit" $LOG
grep draw_ms $LOG | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print "draws", NR, "median", a[int(NR/2)], "p90", a[int(NR*0.9)]}'
