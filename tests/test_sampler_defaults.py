"""Per-model sampling defaults (config.json meta.sampling) and classifier-guided selection among candidates."""

import argparse

import pytest
import torch
from torch import nn

from maskgit.commands.parser import add_dataclass_args, explicit_sample_kwargs
from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.pipeline import Pipeline
from maskgit.sampling.defaults import defaults_from_meta, sampling_section
from maskgit.sampling.selection import best_of, candidate_noise


def test_defaults_from_meta():
    assert defaults_from_meta({}) == SampleConfig()
    cfg = defaults_from_meta({"sampling": {"steps": 12, "choice_temperature": 8, "order": "halton"}})
    assert (cfg.steps, cfg.choice_temperature, cfg.order, cfg.cfg) == (12, 8.0, "halton", 0.0)
    assert sampling_section(cfg) == {"steps": 12, "choice_temperature": 8.0, "order": "halton"}
    for bad, match in (({"sampling": {"stepz": 3}}, "stepz"), ({"sampling": {"steps": 0}}, "steps"),
                       ({"sampling": {"order": "raster"}}, "order"), ({"sampling": {"start_step": 2}}, "start_step"),
                       ({"sampling": [8]}, "object"), ({"sampling": {"steps": "8"}}, "integer")):
        with pytest.raises(MaskGITError, match=match):
            defaults_from_meta(bad)


def test_cli_passes_only_the_flags_given():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, SampleConfig, skip=("start_step",))
    assert explicit_sample_kwargs(p.parse_args([])) == {}
    assert explicit_sample_kwargs(p.parse_args(["--steps", "4", "--order", "random"])) == {"steps": 4,
                                                                                          "order": "random"}


@pytest.fixture()
def pipe_with_defaults(tiny_pipeline_dir):
    pipe = Pipeline.load(tiny_pipeline_dir)
    pipe.transformer.meta = {**pipe.transformer.meta, "sampling": {"steps": 3, "order": "halton", "cfg": 1.0}}
    return Pipeline(pipe.tokenizer, pipe.transformer, class_names=pipe.class_names)


def test_pipeline_uses_the_models_defaults_unless_a_setting_is_given(pipe_with_defaults):
    pipe = pipe_with_defaults
    assert pipe.sample_config() == SampleConfig(steps=3, order="halton", cfg=1.0)
    assert pipe.sample_config(steps=5, cfg=None) == SampleConfig(steps=5, order="halton", cfg=1.0)
    a = pipe.generate([0, 1], seed=3, output="tensor")
    b = pipe.generate([0, 1], seed=3, output="tensor", steps=3, order="halton", cfg=1.0)
    c = pipe.generate([0, 1], seed=3, output="tensor", steps=3, order="confidence", cfg=1.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_bad_sampling_section_fails_at_load(tiny_pipeline_dir):
    pipe = Pipeline.load(tiny_pipeline_dir)
    pipe.transformer.meta = {**pipe.transformer.meta, "sampling": {"schedule": "nope"}}
    with pytest.raises(MaskGITError, match="meta.sampling"):
        Pipeline(pipe.tokenizer, pipe.transformer)


def test_best_of_keeps_the_most_on_class_candidate():
    tokens = torch.zeros(2, 4, dtype=torch.long)
    labels = torch.tensor([1, 0])

    def decode_fn(t, lab):  # candidate j of each image: every token = j
        return torch.arange(len(t))[:, None].remainder(3).expand(-1, 4).clone()

    def class_logits(t):  # class 1 likes token value 2, class 0 likes value 0
        v = t[:, 0].float()
        return torch.stack([-v, v], 1)
    out, pick = best_of(tokens, labels, 3, decode_fn, class_logits)
    assert pick.tolist() == [2, 0] and out[:, 0].tolist() == [2, 0]
    with pytest.raises(MaskGITError, match="class label"):
        best_of(tokens, torch.tensor([-1, 0]), 3, decode_fn, class_logits)


class MeanClassifier(nn.Module):
    """A stand-in classifier over 4 classes: its logits depend on the image's mean brightness."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m * s for s in (-4.0, -1.0, 1.0, 4.0)], 1)


def test_pipeline_candidates_pick_from_the_seeds_candidates(tiny_pipeline_dir):
    base = Pipeline.load(tiny_pipeline_dir)
    pipe = Pipeline(base.tokenizer, base.transformer, features=MeanClassifier(), class_names=base.class_names)
    labels, k = [3, 0, 3], 4
    chosen = pipe.generate(labels, seed=7, output="tensor", candidates=k, steps=2)
    # the candidates: the same decode of each label repeated k times with the same seed
    cands = pipe.generate([l for l in labels for _ in range(k)], seed=7, output="tensor", steps=2)
    cands = cands.view(3, k, *chosen.shape[1:])
    logp = torch.log_softmax(MeanClassifier()(cands.flatten(0, 1)), -1).view(3, k, 4)
    best = logp[torch.arange(3), :, torch.tensor(labels)].argmax(1)
    assert torch.allclose(chosen, cands[torch.arange(3), best], atol=1e-5)
    # one seed per image: each image is what its seed gives alone
    each = pipe.generate(labels, seed=[5, 6, 7], output="tensor", candidates=k, steps=2)
    alone = pipe.generate([labels[2]], seed=7, output="tensor", candidates=k, steps=2)
    assert torch.allclose(each[2], alone[0], atol=1e-5)
    with pytest.raises(MaskGITError, match="classifier"):
        base.generate([0], candidates=2)
    with pytest.raises(MaskGITError, match="class label"):
        pipe.generate(num=2, candidates=2)


def test_candidate_noise_expands_row_generators():
    from maskgit.sampling.noise import RowGenerators
    g = RowGenerators([(torch.Generator().manual_seed(1), 2), (torch.Generator().manual_seed(2), 1)])
    assert [n for _, n in candidate_noise(None, g, 3, 4).blocks] == [8, 4]
    assert [n for _, n in candidate_noise([1, 2], None, 2, 3).blocks] == [3, 3]
    with pytest.raises(MaskGITError, match="seed per image"):
        candidate_noise([1], None, 2, 3)


def test_the_shipped_model_stores_its_measured_defaults():
    """fashion-mnist/maskgit/config.json carries the settings chosen by `maskgit bench samplers` (RESULTS.md)."""
    import maskgit
    pipe = maskgit.load("fashion-mnist")
    assert pipe.transformer.meta["sampling"] == {"order": "halton", "cfg": 1.0}
    assert pipe.sample_config() == SampleConfig(order="halton", cfg=1.0)
    assert pipe.sample_config(order="confidence", cfg=0.0) == SampleConfig()
