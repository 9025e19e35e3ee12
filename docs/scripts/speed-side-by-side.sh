#!/usr/bin/env bash
# kvscope bench and llama.cpp's llama-bench on the same GGUF in alternating rounds, and per
# figure the median kvscope / llama.cpp ratio with its spread (docs/speed.md).
#
#   docs/scripts/speed-side-by-side.sh MODEL.gguf OUT_DIR [PREFILL] [DECODE] [ROUNDS] [REPS]
#
# PREFILL and DECODE are comma lists (default 512,2048 and 0,2048,4096). ROUNDS (default 3,
# at least 3 for a median worth the name) rounds each run both tools once, in alternating
# order (odd rounds llama.cpp first, even rounds kvscope first), so drift in the machine's
# speed falls on both; REPS (default 1) is each tool's own repetitions inside a round.
# Each round gives a ratio per figure (kvscope t/s / llama.cpp t/s of that round); the
# table shows the median ratio and its min-max over the rounds, next to each tool's
# median t/s. Every round's numbers go to OUT_DIR/NAME.ratios.json.
#
# Needs a release build (target/release/kvscope; KVSCOPE overrides) and
# ../shared/tools/llamacpp-bench build (LLAMACPP_BENCH overrides). Threads: 2 (THREADS).
set -euo pipefail
model=$1; out=$2; pre=${3:-512,2048}; dec=${4:-0,2048,4096}; rounds=${5:-3}; reps=${6:-1}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")/../.." && pwd)
kvscope=${KVSCOPE:-$here/target/release/kvscope}
lcpp=${LLAMACPP_BENCH:-$here/../shared/tools/llamacpp-bench}
[ -x "$lcpp" ] || lcpp=/work/shared/tools/llamacpp-bench
[ "$rounds" -ge 1 ] || { echo "ROUNDS must be at least 1" >&2; exit 2; }
[ "$rounds" -ge 3 ] || echo "note: $rounds round(s): the spread says little below 3" >&2
mkdir -p "$out"
name=$(basename "$model" .gguf)

run_llamacpp() {  # round
  THREADS=$threads "$lcpp" bench "$model" -p "$pre" -n 0 -r "$reps" -o json \
    >"$out/$name.r$1.llamacpp-prefill.json"
  THREADS=$threads "$lcpp" bench "$model" -p 0 -n 64 -d "$dec" -r "$reps" -o json \
    >"$out/$name.r$1.llamacpp-decode.json"
}
run_kvscope() {  # round
  "$kvscope" bench --model "$model" --threads "$threads" --reps "$reps" \
    --prefill "$pre" --decode "$dec" --bandwidth --json >"$out/$name.r$1.kvscope.json"
}

for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then
    echo "round $r/$rounds: llama.cpp, then kvscope" >&2
    run_llamacpp "$r"; run_kvscope "$r"
  else
    echo "round $r/$rounds: kvscope, then llama.cpp" >&2
    run_kvscope "$r"; run_llamacpp "$r"
  fi
done

python3 - "$out/$name" "$rounds" <<'PY'
import json, statistics, sys
base, rounds = sys.argv[1], int(sys.argv[2])

def llamacpp(r):
    ref = {}
    for r_ in json.load(open(f"{base}.r{r}.llamacpp-prefill.json")):
        if r_.get("n_prompt", 0) > 0 and r_.get("n_gen", 0) == 0:
            ref[("prefill", r_["n_prompt"])] = r_["avg_ts"]
    for r_ in json.load(open(f"{base}.r{r}.llamacpp-decode.json")):
        if r_.get("n_gen", 0) > 0 and r_.get("n_prompt", 0) == 0:
            ref[("decode", r_.get("n_depth", 0))] = r_["avg_ts"]
    return ref

def kvscope(r):
    k = json.load(open(f"{base}.r{r}.kvscope.json"))
    figs = {}
    for x in k["results"]:
        if x["what"] == "prefill":
            figs[("prefill", x["tokens"])] = x["tps"]
        elif x.get("kept") == "full":
            figs[("decode", x["context"])] = x["tps"]
    return k, figs

per_round = []
bandwidth = []  # (read bytes/s, ceiling t/s) per round, from `kvscope bench --bandwidth`
for r in range(1, rounds + 1):
    k, figs = kvscope(r)
    per_round.append((figs, llamacpp(r)))
    if k.get("bandwidth"):
        bandwidth.append((k["bandwidth"]["read_bytes_per_s"], k["bandwidth"]["ceiling_tps"]))

keys = list(per_round[0][0].keys())
rows = []
for key in keys:
    ks = [f[key] for f, _ in per_round if key in f]
    ls = [l[key] for _, l in per_round if key in l]
    ratios = [f[key] / l[key] for f, l in per_round if key in f and key in l]
    row = {"figure": f"{key[0]} {key[1]}", "kvscope_tps": [round(x, 2) for x in ks],
           "llamacpp_tps": [round(x, 2) for x in ls], "ratios": [round(x, 3) for x in ratios]}
    if ratios:
        row.update(ratio_median=round(statistics.median(ratios), 2),
                   ratio_min=round(min(ratios), 2), ratio_max=round(max(ratios), 2))
    rows.append(row)

m = k["model"]; mem = k["memory"]
med = lambda xs: f"{statistics.median(xs):.2f}" if xs else "-"
print(f"{m['file']}: {m['formats']}; {rounds} alternating round(s)")
print("| figure | kvscope t/s (median) | llama.cpp t/s (median) | ratio (median) | ratio min-max |")
print("|---|---|---|---|---|")
for r in rows:
    if "ratio_median" in r:
        ratio, spread = f"{r['ratio_median']:.2f}", f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
    else:
        ratio, spread = "-", "-"
    print(f"| {r['figure']} | {med(r['kvscope_tps'])} | {med(r['llamacpp_tps'])} | {ratio} | {spread} |")
print(f"memory (last round): weights {mem['weights_bytes']/2**20:.0f} MiB, file {m['file_bytes']/2**20:.0f} MiB, "
      f"peak RSS {(mem['peak_rss_bytes'] or 0)/2**20:.0f} MiB")
if bandwidth:
    print(f"memory read bandwidth (probe, median of rounds): {statistics.median(b for b, _ in bandwidth)/1e9:.1f} GB/s, "
          f"empty-cache decode ceiling {statistics.median(c for _, c in bandwidth):.1f} t/s "
          f"(decode reads {k['bandwidth']['decode_read_bytes_per_token']/1e6:.0f} MB of weights per token)")
json.dump({"model": m, "memory": mem, "rounds": rounds, "figures": rows,
           "bandwidth": [{"read_bytes_per_s": b, "ceiling_tps": c} for b, c in bandwidth]},
          open(base + ".ratios.json", "w"), indent=1)
PY
