#!/usr/bin/env python3
"""Markdown tables for docs/results.md from `kvscope eval` results.csv files.

  results-tables.py niah RESULTS.csv     cells answered exactly per method x budget (w8 / w32 ...)
  results-tables.py sweep RESULTS.csv    exact answers over the prompts the full cache answers,
                                         token agreement and KV kept, per method x budget
  results-tables.py best RESULTS.csv     compresskv against the best baseline (same budget, window)
"""
import csv, sys
from collections import OrderedDict, defaultdict

def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))

def budgets_windows(rs):
    bud = list(OrderedDict.fromkeys(r["budget"] for r in rs))
    bud.sort(key=lambda b: float(b.rstrip("%")))
    win = sorted(set(int(r["window"]) for r in rs))
    meth = list(OrderedDict.fromkeys(r["method"] for r in rs))
    return meth, bud, win

def table(rs, cell):
    meth, bud, win = budgets_windows(rs)
    by = defaultdict(list)
    for r in rs:
        by[(r["method"], r["budget"], int(r["window"]))].append(r)
    out = ["| method | " + " | ".join(bud) + " |", "|---|" + "---|" * len(bud)]
    for m in meth:
        name = m + (" (upper bound)" if m == "oracle" else "")
        cells = [" / ".join(cell(by[(m, b, w)]) for w in win) for b in bud]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out), win

def exact(r):
    return r["exact"] == "true"

def main():
    kind, path = sys.argv[1], sys.argv[2]
    rs = rows(path)
    if kind == "niah":
        t, win = table(rs, lambda g: f"{sum(map(exact, g))}" if g else "-")
        print(f"cells answered exactly (of {len(set(r['item'] for r in rs))}), window " + " / ".join(map(str, win)))
        print(); print(t)
    elif kind == "sweep":
        full_ok = {r["item"] for r in rs if r["full_exact"] == "true"}
        t, win = table(rs, lambda g: f"{sum(exact(r) for r in g if r['item'] in full_ok)}" if g else "-")
        print(f"exact answers on the {len(full_ok)} prompts the full cache answers, window " + " / ".join(map(str, win)))
        print(); print(t)
        t, win = table(rs, lambda g: f"{sum(float(r['token_match']) for r in g) / len(g):.2f}" if g else "-")
        print(); print("mean token agreement with the full cache, window " + " / ".join(map(str, win)))
        print(); print(t)
        t, win = table(rs, lambda g: f"{100 * sum(float(r['kv_fraction']) for r in g) / len(g):.1f}%" if g else "-")
        print(); print("mean KV kept (fraction of the full cache), window " + " / ".join(map(str, win)))
        print(); print(t)
    elif kind == "best":
        full_ok = {r["item"] for r in rs if r["full_exact"] == "true"}
        meth, bud, win = budgets_windows(rs)
        score = defaultdict(int)
        for r in rs:
            if r["item"] in full_ok and exact(r):
                score[(r["method"], r["budget"], int(r["window"]))] += 1
        others = [m for m in meth if m not in ("compresskv", "oracle")]
        print("| budget | window | compresskv | best baseline | oracle (upper bound) |")
        print("|---|---|---|---|---|")
        for b in bud:
            for w in win:
                best = max(score[(m, b, w)] for m in others)
                who = [m for m in others if score[(m, b, w)] == best]
                names = "all" if len(who) == len(others) else ", ".join(who)
                print(f"| {b} | {w} | {score[('compresskv', b, w)]} | {best} ({names}) | {score[('oracle', b, w)]} |")
    else:
        sys.exit(__doc__)

main()
