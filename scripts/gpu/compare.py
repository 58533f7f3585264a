#!/usr/bin/env python3
"""Compare two bench JSON files (examples/bench.rs --json) figure by figure.

Usage: python3 scripts/gpu/compare.py A.json B.json

For an A/B of one setting (run.sh writes bench.json beside bench-single.json, bench-crs.json,
...): the conv passes of every shape and their totals, then the model figures (wall, GPU sum,
GPU span) and the kernel families both runs list. Each line gives A, B and B / A, so below 1
means B is faster. Figures missing from either file are skipped.
"""
import json
import sys


def ratio(a, b):
    return f"{b / a:6.3f}" if a and b else "     -"


def line(name, a, b, unit="ms"):
    if a is None or b is None:
        return
    print(f"  {name:<44} {a:10.3f} {b:10.3f} {unit}  {ratio(a, b)}")


def gpu_or_wall(t):
    return t.get("gpu_ms") if t.get("gpu_ms") is not None else t.get("wall_ms")


def settings(d):
    keys = ["conv_shapes", "precision", "order", "staging", "f16_staging", "batch", "iters"]
    return ", ".join(f"{k} {d[k]}" for k in keys if k in d)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = (json.load(open(p)) for p in sys.argv[1:])
    print(f"A: {sys.argv[1]} ({a['adapter']['name']}; {settings(a)})")
    print(f"B: {sys.argv[2]} ({b['adapter']['name']}; {settings(b)})")
    print(f"  {'':<44} {'A':>10} {'B':>10}     {'B / A':>6}")
    convs_b = {c["layer"]: c for c in b.get("convs") or []}
    if a.get("convs") and convs_b:
        print("conv passes (GPU ms, else wall):")
        for c in a["convs"]:
            other = convs_b.get(c["layer"])
            if other is None:
                continue
            for key, short in [("forward", "fwd"), ("input_grad", "dx"), ("weight_grad", "dw")]:
                line(f"{c['layer']} {short}", gpu_or_wall(c[key]), gpu_or_wall(other[key]))
    ta, tb = a.get("conv_totals"), b.get("conv_totals")
    if ta and tb:
        print("conv totals, weighted by count:")
        for key in ["forward_ms", "input_grad_ms", "weight_grad_ms"]:
            line(key, ta.get(key), tb.get(key))
    models_b = {(m["model"], m["mode"], m["image_size"], m["batch"]): m
                for m in b.get("models") or []}
    for m in a.get("models") or []:
        other = models_b.get((m["model"], m["mode"], m["image_size"], m["batch"]))
        if other is None:
            continue
        print(f"{m['model']} {m['mode']} {m['image_size']}, batch {m['batch']}:")
        for key in ["wall_ms", "gpu_ms", "gpu_span_ms", "cpu_record_ms"]:
            line(key, m.get(key), other.get(key))
        fam_b = {(k["file"], k["entry"]): k for k in other.get("top_kernels") or []}
        for k in m.get("top_kernels") or []:
            o = fam_b.get((k["file"], k["entry"]))
            if o is not None:
                line(f"{k['file']}::{k['entry']} ({k['dispatches']})", k["gpu_ms"], o["gpu_ms"])


if __name__ == "__main__":
    main()
