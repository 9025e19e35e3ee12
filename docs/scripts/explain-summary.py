#!/usr/bin/env python3
"""Summarises the reports of docs/scripts/explain-sweep.sh: per method, the mean lost
attention mass (over steps, layers and query heads), the mean teacher-forced KL, how
often the compressed cache and the rescue answer (sidecar answer in the text) and match
the full cache exactly, and the overlap with the attention oracle.
Usage: explain-summary.py OUT_DIR"""
import glob, json, os, sys
from collections import defaultdict

out = sys.argv[1]
rows = defaultdict(list)
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name, method, _ = os.path.basename(path).rsplit(".", 2)
    try:
        r = json.load(open(path))
    except Exception:
        continue
    side = json.load(open(f"sample-prompts/{name}.json"))
    ans = side["answer"].lower()
    steps = r["steps"]
    cells = [x for s in steps for l in s["lost_mass"] for x in l]
    lost = sum(cells) / max(len(cells), 1)
    kl = sum(s["kl"] for s in steps) / max(len(steps), 1)
    resc = r.get("rescue")
    rows[method].append(dict(
        prompt=name,
        frac=r["compressed"]["kv_fraction"],
        lost=lost, kl=kl,
        comp_ans=ans in r["compressed"]["text"].lower(),
        comp_exact=r["agreement"]["first_divergence"] is None,
        resc_ans=bool(resc) and ans in resc["compressed"]["text"].lower(),
        resc_exact=bool(resc) and resc["agreement"]["first_divergence"] is None,
        resc_match=resc["agreement"]["token_match"] if resc else None,
        comp_match=r["agreement"]["token_match"],
        overlap=r["oracle_gap"]["kept_overlap_with_oracle"],
        oracle_ans=ans in r["oracle_gap"].get("oracle_text", "").lower() if "oracle_text" in r["oracle_gap"] else None,
    ))

print("| method | prompts | KV kept | mean lost mass | mean KL | answer: compressed | answer: rescue | answer: oracle at these budgets | exact: compressed | exact: rescue | token match compressed -> rescue | overlap with oracle |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
order = ["streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "compresskv", "cake",
         "knorm", "tova", "headkv", "random", "oracle"]
for m in order + sorted(set(rows) - set(order)):
    v = rows.get(m)
    if not v:
        continue
    n = len(v)
    def mean(k):
        xs = [x[k] for x in v if x[k] is not None]
        return sum(xs) / len(xs) if xs else float("nan")
    rescued = any(x["resc_match"] is not None for x in v)
    cnt = lambda k: (f"{sum(1 for x in v if x[k])}/{n}"
                     if rescued or not k.startswith("resc") else "-")
    print(f"| {m} | {n} | {100*mean('frac'):.1f}% | {mean('lost'):.3f} | {mean('kl'):.3f} | "
          f"{cnt('comp_ans')} | {cnt('resc_ans')} | {cnt('oracle_ans')} | {cnt('comp_exact')} | {cnt('resc_exact')} | "
          f"{mean('comp_match'):.2f} -> {mean('resc_match'):.2f} | {mean('overlap'):.2f} |".replace("nan", "-"))
