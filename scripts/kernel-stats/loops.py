#!/usr/bin/env python3
"""Count the instructions of each loop in the AMD assembly that kernel_stats --isa writes.

Usage: loops.py FILE...   (files from `kernel_stats --isa DIR` run on RADV)

A loop is a backward branch in the "Assembly" section: from the branch to the block it jumps
to. Each loop is printed with its blocks and its instructions by kind: fma (v_fma*, v_fmac*, the
dual-issue v_dual_fmac pairs counted as two), mma (v_wmma*), other valu, salu, lds (ds_*),
vmem (global/buffer loads and stores), smem (scalar loads), barriers, waits and branches.
Nested loops are listed on their own and inside their parents. Static counts: one pass through
each block of the body, whatever its branches take.

For a loop that loads from memory and then multiplies (a conv kernel's chunk loop: the next
chunk's loads, then this chunk's multiply), "in flight k/n" says how many of the loop's n memory
loads are still outstanding at the first fma or mma after the last of them, going through the
blocks in order and lowering the count at each `s_waitcnt vmcnt(N)`: n/n when the multiply runs
while all the loads are on their way, 0/n when it waits for every one of them first.
"""
import re
import sys


def kind(op):
    if op.startswith("v_wmma"):
        return "mma"
    if op.startswith("v_dual_"):
        return "dual"
    if op.startswith(("v_fma", "v_fmac", "v_pk_fma")):
        return "fma"
    if op.startswith("ds_"):
        return "lds"
    if op.startswith(("global_", "buffer_", "flat_", "scratch_")):
        return "vmem"
    if op.startswith(("s_load", "s_buffer_load")):
        return "smem"
    if op == "s_barrier":
        return "barrier"
    if op.startswith(("s_waitcnt", "s_wait_")):
        return "wait"
    if op.startswith(("s_cbranch", "s_branch")):
        return "branch"
    if op.startswith("v_"):
        return "valu"
    if op.startswith("s_"):
        return "salu"
    return "other"


KINDS = ["fma", "mma", "valu", "salu", "lds", "vmem", "smem", "barrier", "wait", "branch"]


def parse(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    start = text.find("Assembly ===")
    if start < 0:
        raise SystemExit(f"{path}: no Assembly section (run kernel_stats --isa on RADV)")
    blocks = []  # (label, [ops])
    for line in text[start:].splitlines()[1:]:
        if line.startswith("==="):
            break
        m = re.match(r"^(BB\d+):", line)
        if m:
            blocks.append((m.group(1), []))
            continue
        line = line.strip()
        if not line or line.startswith(";") or not blocks:
            continue
        op = line.split()[0]
        target = re.search(r"\b(BB\d+)\b", line) if kind(op) == "branch" else None
        blocks[-1][1].append((op, target.group(1) if target else None, line))
    return blocks


def count(blocks):
    c = dict.fromkeys(KINDS, 0)
    for _, ops in blocks:
        for op, _, line in ops:
            k = kind(op)
            if k == "dual":
                # Two operations issued together; an FMA half counts as an fma.
                for h in re.findall(r"(v_dual_\w+)", line)[:2]:
                    c["fma" if "fma" in h else "valu"] += 1
                continue
            c[k if k in c else "valu"] += 1
    return c


def in_flight(blocks):
    """(outstanding, loads) at the first fma/mma after the loop's last memory load, or None."""
    ops = [(op, line) for _, body in blocks for op, _, line in body]
    loads = [i for i, (op, _) in enumerate(ops) if kind(op) == "vmem" and "load" in op]
    if not loads:
        return None
    outstanding = 0
    for i, (op, line) in enumerate(ops):
        k = kind(op)
        if k == "vmem" and "load" in op:
            outstanding += 1
        elif k == "wait":
            m = re.search(r"vmcnt\((\d+)\)", line) or (
                re.search(r"s_waitcnt_vmcnt\s+\w+,\s*(0x[0-9a-f]+|\d+)", line)
            )
            if m:
                outstanding = min(outstanding, int(m.group(1), 0))
        elif i > loads[-1] and (k == "fma" or k == "mma" or (k == "dual" and "fma" in line)):
            return outstanding, len(loads)
    return None


def main():
    for path in sys.argv[1:]:
        blocks = parse(path)
        index = {label: i for i, (label, _) in enumerate(blocks)}
        loops = []
        for i, (_, ops) in enumerate(blocks):
            for op, target, _ in ops:
                if target is not None and index.get(target, i + 1) <= i:
                    loops.append((index[target], i))
        total = count(blocks)
        print(f"{path}\n  whole shader: " + ", ".join(f"{k} {v}" for k, v in total.items() if v))
        for lo, hi in sorted(set(loops)):
            c = count(blocks[lo : hi + 1])
            n = sum(c.values())
            flight = in_flight(blocks[lo : hi + 1])
            inner = [
                f"{blocks[a][0]}..{blocks[b][0]}"
                for a, b in loops
                if lo <= a and b <= hi and (a, b) != (lo, hi)
            ]
            print(
                f"  loop {blocks[lo][0]}..{blocks[hi][0]} ({n} instructions"
                + (f"; contains {', '.join(sorted(set(inner)))}" if inner else "")
                + "): "
                + ", ".join(f"{k} {v}" for k, v in c.items() if v)
                + (f"; in flight {flight[0]}/{flight[1]}" if flight else "")
            )


if __name__ == "__main__":
    main()
