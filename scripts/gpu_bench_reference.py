#!/usr/bin/env python3
"""The transformers side of scripts/gpu-bench.sh, and the comparison of both sides.

  gpu_bench_reference.py run --inputs inputs.json --device cuda:0 --out torch.json
  gpu_bench_reference.py compare vidx.json torch.json [--gpu-peaks VIDX_MIB TORCH_MIB]

`run` builds Qwen2_5_VLForConditionalGeneration from the config in inputs.json (written by the
vidx gpu_bench binary, so both sides build the same shapes) with random weights, bf16 and
attn_implementation="sdpa" on a GPU (f32 on the CPU), and times, after one warm-up, the median
of the repeats with device synchronisation: the vision tower, vision + prefill
(logits_to_keep=1), and greedy decoding with EOS ignored at each batch size (from the first
generated token to the last, through generate()). No network access.
"""
import argparse
import inspect
import json
import resource
import statistics
import sys
import time


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(a):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.generation.streamers import BaseStreamer

    inputs = json.load(open(a.inputs))
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(**inputs["config"])
    t0 = time.time()
    with torch.device(device):
        try:
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                config, dtype=dtype, attn_implementation="sdpa")
        except TypeError:
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                config, torch_dtype=dtype, attn_implementation="sdpa")
    model = model.to(device=device, dtype=dtype).eval()
    sync(device)
    ids = inputs["input_ids"]
    grid = torch.tensor(inputs["image_grid_thw"], dtype=torch.long, device=device)
    patches = int(grid.prod(dim=1).sum())
    pixels = torch.randn(patches, 1176, device=device, dtype=dtype)
    image_id = inputs["config"]["image_token_id"]
    print(f"transformers: {dtype} on {device}, built in {time.time() - t0:.1f}s; "
          f"{len(ids)} prompt tokens, {len(inputs['image_grid_thw'])} frames", flush=True)
    accepts_mm = "mm_token_type_ids" in inspect.signature(model.forward).parameters

    def model_inputs(batch):
        x = {"input_ids": torch.tensor([ids] * batch, device=device),
             "pixel_values": pixels.repeat(batch, 1), "image_grid_thw": grid.repeat(batch, 1)}
        if accepts_mm:
            x["mm_token_type_ids"] = (x["input_ids"] == image_id).long()
        return x

    visual = getattr(model.model, "visual", None) or model.visual

    class Clock(BaseStreamer):
        """Times the first generated token (the prefill's) and the last."""
        def __init__(self):
            self.puts = 0
            self.first = None

        def put(self, value):
            self.puts += 1
            if self.puts == 2:  # the first put is the prompt
                sync(device)
                self.first = time.time()

        def end(self):
            pass

    n = inputs["decode_tokens"]
    batches = inputs["batches"]
    vision, prefill, decode = [], [], {b: [] for b in batches}
    with torch.inference_mode():
        for repeat in range(inputs["repeats"] + 1):
            sync(device)
            t0 = time.time()
            visual(pixels, grid_thw=grid)
            sync(device)
            v = time.time() - t0
            if hasattr(model.model, "rope_deltas"):
                model.model.rope_deltas = None
            t0 = time.time()
            model(**model_inputs(1), use_cache=True, logits_to_keep=1)
            sync(device)
            p = time.time() - t0
            rates = {}
            for b in batches:
                if hasattr(model.model, "rope_deltas"):
                    model.model.rope_deltas = None
                clock = Clock()
                model.generate(**model_inputs(b), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               streamer=clock, pad_token_id=0)
                sync(device)
                rates[b] = b * (n - 1) / (time.time() - clock.first)
            label = "warm-up" if repeat == 0 else f"repeat {repeat}"
            print(f"transformers {label}: vision {v:.3f}s vision+prefill {p:.3f}s decode " +
                  ", ".join(f"b{b} {r:.1f} tok/s" for b, r in rates.items()), flush=True)
            if repeat > 0:
                vision.append(v)
                prefill.append(p)
                for b in batches:
                    decode[b].append(rates[b])
    result = {
        "side": "transformers", "device": a.device, "dtype": str(dtype).replace("torch.", ""),
        "prompt_tokens": len(ids), "vision_s": statistics.median(vision),
        "vision_prefill_s": statistics.median(prefill),
        "decode_tokens_per_s": {str(b): statistics.median(r) for b, r in decode.items()},
        "peak_host_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_peak_allocated_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                                     if device.type == "cuda" else None),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    print(json.dumps(result), flush=True)
    with open(a.out, "w") as f:
        json.dump(result, f)


def compare(a):
    v, t = json.load(open(a.vidx)), json.load(open(a.torch))
    print(f"\nvidx vs transformers {t.get('versions', {})}, {v['device']} {v['dtype']}, "
          f"{v['prompt_tokens']} prompt tokens (medians; ratio = vidx / transformers)")
    print(f"{'':<30}{'vidx':>12}{'transformers':>14}{'ratio':>9}")

    def row(name, x, y, unit):
        print(f"{name:<30}{x:>10.3f}{unit:<2}{y:>12.3f}{unit:<2}{x / y:>9.2f}")

    row("vision tower", v["vision_s"], t["vision_s"], "s")
    row("vision + prefill", v["vision_prefill_s"], t["vision_prefill_s"], "s")
    base = v["decode_tokens_per_s"].get("1")
    for b, rate in v["decode_tokens_per_s"].items():
        row(f"decode batch {b} (tokens/s)", rate, t["decode_tokens_per_s"][b], "")
    if base:
        for b, rate in v["decode_tokens_per_s"].items():
            if b != "1":
                print(f"vidx decode batch {b} / batch 1: {rate / base:.2f}x")
    if a.gpu_peaks:
        row("peak GPU memory (MiB)", a.gpu_peaks[0], a.gpu_peaks[1], "")
    else:
        row("peak host memory (MiB)", v["peak_host_mib"], t["peak_host_mib"], "")
    if t.get("torch_peak_allocated_mib"):
        print(f"(torch.cuda.max_memory_allocated: {t['torch_peak_allocated_mib']:.0f} MiB)")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--inputs", required=True)
    r.add_argument("--device", default="cuda:0")
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("vidx")
    c.add_argument("torch")
    c.add_argument("--gpu-peaks", nargs=2, type=float, metavar=("VIDX_MIB", "TORCH_MIB"))
    a = ap.parse_args()
    if a.cmd == "run":
        if a.device != "cpu" and not a.device.startswith("cuda"):
            sys.exit(f"--device {a.device}: expected cpu or cuda:N")
        run(a)
    else:
        compare(a)


if __name__ == "__main__":
    main()
