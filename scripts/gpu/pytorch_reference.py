"""PyTorch's figures for issue 6's reference table, measured on whatever GPU runs the bench.

The issue's reference figures come from an H100; a lent machine may be another card (an H200
has the H100's arithmetic and 1.4x its memory bandwidth). Run beside `bench` in the same call
(`TORCH_REF=1 bash scripts/gpu/run.sh ...`), this gives the baseline on the same card:
ResNet-18 train steps (224x224 batch 128 and 32x32 batch 256, SGD with momentum), ResNet-18
inference at batch 1 and 64, f32 with TF32 off and TF32 on, the bf16 channels-last step,
ResNet-50's step in f32, TF32 and bf16 and its f32 inference at batch 1 and 64 (the bench times
ResNet-50 in f32 too, which the issue's table gives no PyTorch figure for), and the peak memory of each train step: the tensors in use at once
(`max_memory_allocated`, the bench's "live") and the caching allocator's footprint
(`max_memory_reserved`, the bench's "pool").

Each figure: warm-up steps, then the mean of timed steps between CUDA events. cuDNN's
benchmark mode is on (PyTorch's fastest algorithms, as a user tuning for speed would run it).
Usage: python3 pytorch_reference.py [--json FILE]
"""

import argparse
import json

import torch
import torchvision


def use_tf32(on):
    """TF32 for matmuls and convolutions on or off (process-wide, so every figure sets it)."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def train_step_ms(arch, size, batch, classes, precision, iters=20, warmup=5):
    use_tf32(precision == "tf32")
    model = getattr(torchvision.models, arch)(num_classes=classes).cuda()
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() / 2**20, torch.cuda.max_memory_reserved() / 2**20)
    del model, opt, x, y
    torch.cuda.empty_cache()
    return start.elapsed_time(end) / iters, peak


@torch.no_grad()
def inference_ms(arch, batch, precision, iters=50, warmup=10):
    use_tf32(precision == "tf32")
    model = getattr(torchvision.models, arch)(num_classes=1000).cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    for _ in range(warmup):
        model(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        model(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}")
    rows = []

    def row(work, precision, ms, images, peak=None):
        live, reserved = peak if peak is not None else (None, None)
        rows.append({"work": work, "precision": precision, "ms": ms,
                     "images_per_s": images / ms * 1e3, "peak_mib": live,
                     "peak_reserved_mib": reserved})
        mem = (f", peak {live:,.0f} MiB allocated, {reserved:,.0f} MiB reserved"
               if peak is not None else "")
        print(f"{work:<34} {precision:<5} {ms:8.2f} ms {images / ms * 1e3:9,.0f} img/s{mem}",
              flush=True)

    for precision in ["f32", "tf32", "bf16"]:
        ms, peak = train_step_ms("resnet18", 224, 128, 1000, precision)
        row("resnet18 train 224x224 b128", precision, ms, 128, peak)
    ms, peak = train_step_ms("resnet18", 32, 256, 10, "f32")
    row("resnet18 train 32x32 b256", "f32", ms, 256, peak)
    for precision in ["f32", "tf32", "bf16"]:
        ms, peak = train_step_ms("resnet50", 224, 128, 1000, precision)
        row("resnet50 train 224x224 b128", precision, ms, 128, peak)
    for arch in ["resnet18", "resnet50"]:
        for batch in [1, 64]:
            ms = inference_ms(arch, batch, "f32")
            row(f"{arch} inference 224x224 b{batch}", "f32", ms, batch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
