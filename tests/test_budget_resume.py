"""A --max-minutes run interrupted mid-schedule and resumed continues the same fitted schedule and time budget, and
ends at the step, with the weights, of a run that was never interrupted (fake clock: 0.5 s per step)."""

import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import maskgit.training.loop as loop
from maskgit.config import TrainConfig, transformer_preset
from maskgit.data.tokenstore import TokenStore, write_store
from maskgit.training.resume import TrainingInterrupted


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _timed_task(clock, stop_at=None):
    from maskgit.training.objectives import MaskedTokenTask

    class Timed(MaskedTokenTask):
        def forward(self, batch, ctx):
            clock.t += 0.5
            if self.training and ctx.step == stop_at:  # a SIGTERM arrives during this step
                os.kill(os.getpid(), signal.SIGTERM)
            return super().forward(batch, ctx)

    return Timed


def test_a_budget_run_resumed_after_an_interruption_ends_where_the_unbroken_run_ends(tmp_path):
    rng = np.random.default_rng(0)
    write_store(tmp_path / "s", rng.integers(0, 32, size=(200, 4, 4)), labels=rng.integers(0, 4, size=200),
                meta={"codebook_size": 32, "classes": list("abcd")})
    cfg = TrainConfig(batch_size=8, lr=1e-3, warmup_steps=500, max_steps=100_000, max_minutes=0.5, save_every=10,
                      log_every=1, val_batches=1)

    def run(out, stop_at=None, resume=False, clock=None):
        torch.manual_seed(0)
        from maskgit.models.transformer import MaskGITTransformer
        task = _timed_task(clock, stop_at)(MaskGITTransformer(transformer_preset("tiny")), cfg)
        return loop.train(task, TokenStore(tmp_path / "s"), cfg, out, progress=False, clock=clock, resume=resume)

    whole = run(tmp_path / "whole", clock=_Clock())
    assert whole.stopped_early and 58 <= whole.step <= 62  # 30 s at 0.5 s per step

    clock = _Clock()
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "broken", stop_at=24, clock=clock)  # past the fits at 4, 8 and 16 steps
    clock.t += 3600  # an hour passes between the stop and the resume: it does not count
    again = run(tmp_path / "broken", resume=True, clock=clock)
    assert again.step == whole.step and again.stopped_early
    a = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import json
    lr = lambda d: [json.loads(x)["lr"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lr(tmp_path / "broken") == lr(tmp_path / "whole")
