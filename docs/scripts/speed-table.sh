#!/usr/bin/env bash
# Issue 21's whole side-by-side table in one go: speed-side-by-side.sh on every model of
# docs/speed.md's table, then one markdown table (figures down, models across; each cell
# "kvscope / llama.cpp t/s, median ratio (min-max)").
#
#   docs/scripts/speed-table.sh OUT_DIR [SYNTH_DIR]
#
# Models: SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M from the model cache (fetched by
# kvscope on first use), and three synthetic files written with `kvscope synth --mix
# q4_k_m` into SYNTH_DIR (default /work/big/synth; keep it outside the repository) when
# missing: qwen2.5-0.5b, llama-3.2-1b, llama-3.1-8b. A 1B file made before 2026-12-04
# holds a Q4_K embedding where llama.cpp's mix has Q6_K: delete it to get the real mix.
#
# Figures: prefill PREFILL (default 512,2048) and decode at DECODE (default 0,2048 tokens
# of context) for SmolLM2, Gemma 3, the 0.5B and the 1B shape; prefill 512 and empty-cache
# decode for the 8B shape; prefill and decode at LONG (default 16384) tokens for Gemma 3
# and the 1B shape; with each model's empty-cache decode, the ceiling `kvscope bench
# --bandwidth` reports (memory read bandwidth / weight bytes per token). ROUNDS (default
# 3) alternating rounds per model, one round for the LONG figures. MODELS (comma list of smollm2,gemma3,qwen05,llama1b,llama8b,gemma3-long,
# llama1b-long; default all) picks rows; QUICK=1 runs tiny sizes (prefill 64, decode 0,64,
# LONG 256, one round) to check the script itself.
#
# Run time on the 2-core AMD EPYC, quiet (estimated from the 2026-11-30 figures, not
# measured end to end): SmolLM2 ~2 min, Gemma 3 ~3, 0.5B ~6, 1B ~8, 8B ~5, Gemma 3 at 16K
# ~5, the 1B shape at 16K ~20 (its 16K prompt is prefilled twice per tool: once for the
# prefill figure, once as the decode context): ~50 minutes in all, ~30 without
# llama1b-long. Each model's elapsed time is printed as it ends.
#
# Needs target/release/kvscope (`cargo build --release`; KVSCOPE overrides) and the
# llama.cpp build speed-side-by-side.sh uses. Threads: 2 (THREADS).
set -euo pipefail
out=${1:?usage: speed-table.sh OUT_DIR [SYNTH_DIR]}
synth=${2:-${SYNTH_DIR:-/work/big/synth}}
here=$(cd "$(dirname "$0")/../.." && pwd)
kvscope=${KVSCOPE:-$here/target/release/kvscope}
export KVSCOPE=$kvscope
home=${KVSCOPE_HOME:-$HOME/.cache/kvscope}
pre=${PREFILL:-512,2048}; dec=${DECODE:-0,2048}; long=${LONG:-16384}; rounds=${ROUNDS:-3}
models=${MODELS:-smollm2,gemma3,qwen05,llama1b,llama8b,gemma3-long,llama1b-long}
if [ "${QUICK:-0}" = 1 ]; then pre=64; dec=0,64; long=256; rounds=1; fi
[ -x "$kvscope" ] || { echo "no $kvscope: run cargo build --release (or set KVSCOPE)" >&2; exit 2; }
mkdir -p "$out"
case "$synth" in "$here"/*) echo "SYNTH_DIR $synth is inside the repository; pick a folder outside it" >&2; exit 2;; esac

wants() { case ",$models," in *",$1,"*) return 0;; *) return 1;; esac; }

cached() {  # known model name, file name -> path (fetched on first use)
  local f="$home/models/$2"
  if [ ! -f "$f" ]; then
    echo "fetching $1 into the model cache" >&2
    "$kvscope" bench --model "$1" --prefill 8 --decode 0 --steps 1 --reps 1 >/dev/null
  fi
  [ -f "$f" ] || { echo "cannot find $f after fetching $1 (KVSCOPE_HOME?)" >&2; exit 1; }
  echo "$f"
}

synthetic() {  # shape -> path (written when missing)
  local f="$synth/$1-q4_k_m.gguf"
  if [ ! -f "$f" ]; then
    mkdir -p "$synth"
    echo "writing $f" >&2
    "$kvscope" synth --shape "$1" --mix q4_k_m --out "$f" >&2
  fi
  echo "$f"
}

# label|model|prefill|decode|rounds
runs=()
wants smollm2 && runs+=("SmolLM2-135M Q4_1|$(cached smollm2-135m SmolLM2-135M-Instruct.Q4_1.gguf)|$pre|$dec|$rounds")
wants gemma3 && runs+=("Gemma 3 270M Q4_K_M|$(cached gemma3-270m gemma-3-270m-q4_k_m.gguf)|$pre|$dec|$rounds")
wants qwen05 && runs+=("Qwen2.5-0.5B shape Q4_K_M|$(synthetic qwen2.5-0.5b)|$pre|$dec|$rounds")
wants llama1b && runs+=("Llama-3.2-1B shape Q4_K_M|$(synthetic llama-3.2-1b)|$pre|$dec|$rounds")
wants llama8b && runs+=("Llama-3.1-8B shape Q4_K_M|$(synthetic llama-3.1-8b)|${pre%%,*}|0|$rounds")
wants gemma3-long && runs+=("Gemma 3 270M at $long|$(cached gemma3-270m gemma-3-270m-q4_k_m.gguf)|$long|$long|1")
wants llama1b-long && runs+=("Llama-3.2-1B shape at $long|$(synthetic llama-3.2-1b)|$long|$long|1")

dirs=()
for i in "${!runs[@]}"; do
  IFS='|' read -r label model p d r <<<"${runs[$i]}"
  dir="$out/$i"
  mkdir -p "$dir"
  echo "== $label: prefill $p, decode at $d, $r round(s)" >&2
  t0=$(date +%s)
  "$here/docs/scripts/speed-side-by-side.sh" "$model" "$dir" "$p" "$d" "$r" 1 >"$dir/table.md"
  echo "== $label: $(( $(date +%s) - t0 )) s" >&2
  printf '%s\n' "$label" >"$dir/label"
  dirs+=("$dir")
done

python3 - "${dirs[@]}" <<'PY'
import glob, json, statistics, sys
cols, cells, order = [], {}, []
for d in sys.argv[1:]:
    label = open(f"{d}/label").read().strip()
    (path,) = glob.glob(f"{d}/*.ratios.json")
    r = json.load(open(path))
    cols.append(label)
    for f in r["figures"]:
        fig = f["figure"]
        kind, n = fig.split()
        name = f"prefill {n}" if kind == "prefill" else (
            "decode, empty cache" if n == "0" else f"decode at {n}")
        if name not in order:
            order.append(name)
        med = lambda xs: f"{statistics.median(xs):.1f}" if xs else "-"
        if "ratio_median" in f:
            spread = "" if r["rounds"] == 1 else f" ({f['ratio_min']:.2f}-{f['ratio_max']:.2f})"
            ratio = f"**{f['ratio_median']:.2f}**{spread}"
        else:
            ratio = "-"
        cells[(name, label)] = f"{med(f['kvscope_tps'])} / {med(f['llamacpp_tps'])}, {ratio}"
    bw = r.get("bandwidth") or []
    if bw and any(f["figure"] == "decode 0" for f in r["figures"]):
        gbs = statistics.median(b["read_bytes_per_s"] for b in bw) / 1e9
        ceil = statistics.median(b["ceiling_tps"] for b in bw)
        cells[("empty-cache decode ceiling (bandwidth probe)", label)] = f"{ceil:.1f} t/s ({gbs:.1f} GB/s)"
    mem = r["memory"]
    rss = (mem.get("peak_rss_bytes") or 0) / 2**20
    cells[("peak RSS (kvscope bench)", label)] = f"{rss:,.0f} MiB"
if any(k[0] == "empty-cache decode ceiling (bandwidth probe)" for k in cells):
    order.append("empty-cache decode ceiling (bandwidth probe)")
order.append("peak RSS (kvscope bench)")
print("kvscope / llama.cpp tokens per second (medians), median ratio (min-max over the rounds)")
print()
print("| figure | " + " | ".join(cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for name in order:
    print(f"| {name} | " + " | ".join(cells.get((name, c), "—") for c in cols) + " |")
PY
