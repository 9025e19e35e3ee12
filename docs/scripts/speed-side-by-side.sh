#!/usr/bin/env bash
# kvscope bench and llama.cpp's llama-bench on the same GGUF, interleaved, and the
# kvscope / llama.cpp ratios of every figure (docs/speed.md).
#
#   docs/scripts/speed-side-by-side.sh MODEL.gguf OUT_DIR [PREFILL] [DECODE] [REPS]
#
# PREFILL and DECODE are comma lists (default 512,2048 and 0,2048,4096); REPS the
# repetitions of each tool (default 3). Needs a release build (target/release/kvscope) and
# ../shared/tools/llamacpp-bench build. Threads: 2 (THREADS overrides).
set -euo pipefail
model=$1; out=$2; pre=${3:-512,2048}; dec=${4:-0,2048,4096}; reps=${5:-3}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")/../.." && pwd)
lcpp=${LLAMACPP_BENCH:-$here/../shared/tools/llamacpp-bench}
[ -x "$lcpp" ] || lcpp=/work/shared/tools/llamacpp-bench
mkdir -p "$out"
name=$(basename "$model" .gguf)
# Interleaved: llama.cpp prefill, kvscope (prefill + decode), llama.cpp decode.
THREADS=$threads "$lcpp" bench "$model" -p "$pre" -n 0 -r "$reps" -o json >"$out/$name.llamacpp-prefill.json"
"$here/target/release/kvscope" bench --model "$model" --threads "$threads" --reps "$reps" \
  --prefill "$pre" --decode "$dec" --json >"$out/$name.kvscope.json"
THREADS=$threads "$lcpp" bench "$model" -p 0 -n 64 -d "$dec" -r "$reps" -o json >"$out/$name.llamacpp-decode.json"
python3 - "$out/$name" <<'PY'
import json, sys
base = sys.argv[1]
k = json.load(open(base + ".kvscope.json"))
lp = json.load(open(base + ".llamacpp-prefill.json"))
ld = json.load(open(base + ".llamacpp-decode.json"))
ref = {}
for r in lp:
    if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0:
        ref[("prefill", r["n_prompt"])] = r["avg_ts"]
for r in ld:
    if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
        ref[("decode", r.get("n_depth", 0))] = r["avg_ts"]
rows = []
for r in k["results"]:
    if r["what"] == "prefill":
        key = ("prefill", r["tokens"])
    elif r.get("kept") == "full":
        key = ("decode", r["context"])
    else:
        continue
    l = ref.get(key)
    rows.append({"figure": f"{key[0]} {key[1]}", "kvscope_tps": round(r["tps"], 2),
                 "llamacpp_tps": l and round(l, 2), "ratio": l and round(r["tps"] / l, 2)})
m = k["model"]; mem = k["memory"]
print(f"{m['file']}: {m['formats']}")
print(f"| figure | kvscope t/s | llama.cpp t/s | ratio |")
print(f"|---|---|---|---|")
for r in rows:
    print(f"| {r['figure']} | {r['kvscope_tps']} | {r['llamacpp_tps']} | {r['ratio']} |")
print(f"memory: weights {mem['weights_bytes']/2**20:.0f} MiB, file {m['file_bytes']/2**20:.0f} MiB, "
      f"peak RSS {(mem['peak_rss_bytes'] or 0)/2**20:.0f} MiB")
json.dump({"model": m, "memory": mem, "figures": rows}, open(base + ".ratios.json", "w"), indent=1)
PY
