"""Writes resize_cases.safetensors: torchvision v2 bicubic+antialias resizes of uint8 RGB images,
the reference for `resize_rgb_bicubic` (model/tests/resize.rs).

usage: python make_resize_cases.py   (torch 2.15 + torchvision 0.29, see shared/tools/README-qwen-fixture.md)
"""
import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from safetensors.torch import save_file

CASES = [((37, 53), (28, 56)), ((120, 200), (56, 84)), ((30, 30), (84, 112)), ((64, 48), (64, 28)),
         ((48, 64), (112, 64)), ((91, 17), (28, 28))]
out = {}
rng = np.random.default_rng(1234)
for i, ((h, w), (oh, ow)) in enumerate(CASES):
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    # smooth gradient + noise mix so both flat and high-frequency areas occur
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    img[: h // 2] = ((yy[: h // 2, :, None] * 7 + xx[: h // 2, :, None] * 3 + np.arange(3) * 50) % 256).astype(np.uint8)
    t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    r = F.resize(t, [oh, ow], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    out[f"case{i}.input"] = torch.from_numpy(img)
    out[f"case{i}.output"] = r.permute(1, 2, 0).contiguous()
save_file(out, "resize_cases.safetensors")
