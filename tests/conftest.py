import dataclasses

import pytest
import torch

from maskgit.config import transformer_preset, vqgan_preset
from maskgit.models.transformer import MaskGITTransformer
from maskgit.models.vqgan import VQGAN
from maskgit.storage.checkpoint import save_model

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MASKGIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_models(seed: int = 0):
    """A tiny tokenizer (16 px grey -> 8x8 tokens of 32 codes) and a matching tiny transformer."""
    torch.manual_seed(seed)
    tok = VQGAN(vqgan_preset("tiny")).eval()
    tcfg = dataclasses.replace(transformer_preset("tiny"), grid_size=8)
    return tok, MaskGITTransformer(tcfg).eval()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    tok, tr = tiny_models()
    root = tmp_path_factory.mktemp("pipe")
    save_model(tok, root / "tokenizer")
    save_model(tr, root / "maskgit", meta={"class_names": ["a", "b", "c", "d"]})
    return root
