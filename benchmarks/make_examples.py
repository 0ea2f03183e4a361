"""The example pictures of README.md / RESULTS.md, made with the shipped model through the public API.
Usage: python benchmarks/make_examples.py [OUT_DIR=docs]"""

import sys
from pathlib import Path

import torch

import maskgit
from maskgit.data.datasets import load_dataset
from maskgit.storage.images import make_grid, save_png

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
pipe = maskgit.load("fashion-mnist")
names = pipe.class_names
test = load_dataset("fashion-mnist", "test")

# samples per class, and the decoding process for one sample of each class
labels = [c for c in range(10) for _ in range(8)]
save_png(make_grid(pipe.generate(labels, seed=0, output="tensor"), [names[c] for c in labels], ncol=8, scale=2),
         out / "samples.png")
final, steps = pipe.generate(list(range(10)), seed=1, output="tensor", return_steps=True)
rows = torch.cat([torch.stack([s[j] for s in steps] + [final[j]]) for j in range(10)])
save_png(make_grid(rows, ncol=len(steps) + 1, scale=2), out / "decoding_steps.png")

# inpainting (centre box, original class) and class-conditional editing (whole image, another class)
cells, captions = [], []
for i in range(6):
    x = test.images[i:i + 1].float() / 255
    lab = int(test.targets[i])
    masked = x.clone()
    masked[..., 8:24, 8:24] = 0.5
    inp = pipe.inpaint(x, box=(8, 8, 16, 16), label=lab, seed=i, output="tensor")
    new = (lab + 5) % 10
    ed = pipe.class_edit(x, box=(0, 0, 32, 32), label=new, start_step=2, seed=i, output="tensor")
    cells += [x, masked, inp, ed]
    captions += [names[lab], "masked", "inpainted", f"edit->{names[new]}"]
save_png(make_grid(torch.cat(cells), captions, ncol=8, scale=3), out / "inpainting.png")

# outpainting: 4 token columns (16 px) to the right of four test images
wide = pipe.outpaint(test.images[:4].float() / 255, "right", 4, output="tensor")
save_png(make_grid(wide, ncol=4, scale=3), out / "outpainting.png")
print(f"wrote {out}/samples.png, decoding_steps.png, inpainting.png, outpainting.png")
