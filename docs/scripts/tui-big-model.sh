#!/bin/bash
# Opens the release inspector on a (large) model in tmux, logs the status line every
# 20 s while it loads and prefills (progress bar, ETA), then presses budget keys 30 s
# apart and logs key-to-screen times. Usage: tui-big-model.sh MODEL PROMPT [MAX_NEW] [LOG_DIR]
BIN=${BIN:-./target/release/kvscope}
M=${1:?model}; P=${2:?prompt}; N=${3:-8}; D=${4:-/tmp/tui-big}
mkdir -p "$D"; LOG=$D/timing.log; rm -f "$LOG" "$D/status.log"
tmux kill-session -t big 2>/dev/null
start=$(date +%s)
tmux new-session -d -s big -x 160 -y 45 "KVSCOPE_TRACE_TIMING=$LOG $BIN $P --model $M --max-new $N; sleep 30"
while sleep 20; do
  s=$(tmux capture-pane -p -t big | tail -1)
  echo "$(( $(date +%s) - start )) s | $s" >> "$D/status.log"
  echo "$s" | grep -q '\[ready\]' && break
  tmux has-session -t big 2>/dev/null || break
done
tmux capture-pane -p -t big > "$D/ready-screen.txt"
for k in - - + + '*'; do tmux send-keys -t big -- "$k"; sleep 30; done
tmux capture-pane -p -t big > "$D/after-keys-screen.txt"
tmux send-keys -t big q; sleep 2; tmux kill-session -t big 2>/dev/null
echo "total $(( $(date +%s) - start )) s" >> "$D/status.log"
grep key_to_screen "$LOG"
