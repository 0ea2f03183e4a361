"""One training loop for every stage (tokenizer, MaskGIT transformer, AR baseline).

A *task* is an ``nn.Module`` holding the model being trained (``task.model``) and computing the loss of one
batch (``task(batch, ctx) -> (loss, metrics)``). The loop owns everything else: AdamW, warmup + cosine LR,
clipping, EMA, DDP under torchrun, atomic resumable checkpoints (model, optimizer, scheduler, EMA, RNG states;
the data position is the step), SIGTERM/SIGINT handling, a metrics log, a loss curve and sample grids."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from maskgit.config import TrainConfig, to_dict
from maskgit.data.loader import batch_indices
from maskgit.distributed import init_distributed, shutdown_distributed
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import (
    MANIFEST,
    atomic_dir,
    load_train_state,
    optimizer_from_flat,
    optimizer_to_flat,
    save_model,
    save_train_state,
    write_manifest,
)
from maskgit.training.curves import plot_metrics
from maskgit.training.lora import CONFIG_NAME, WEIGHTS_NAME, checkpoint_state, lora_modules, save_lora
from maskgit.training.resume import TrainingInterrupted, find_checkpoint, truncate_metrics
from maskgit.training.schedule import BudgetSchedule

log = logging.getLogger(__name__)  # the run's messages (the maskgit command shows INFO on stdout)


class BatchSource(Protocol):
    def __len__(self) -> int: ...
    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class StepContext:
    """What a task needs to draw per-example randomness that does not depend on the number of processes:
    draws are made for the whole global batch from a generator seeded by (seed, step), then this rank's rows
    are kept."""

    step: int
    seed: int
    global_batch: int
    rank: int
    world: int
    device: torch.device

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.step * 7919 + salt) % (2 ** 62))

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.rank::self.world].to(self.device)

    def rand(self, *shape: int, salt: int = 0) -> torch.Tensor:
        """Uniform [0,1) numbers of shape (global_batch, *shape), this rank's rows."""
        return self.rows(torch.rand((self.global_batch, *shape), generator=self.generator(salt)))


class Task(Protocol):
    model: nn.Module
    def __call__(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]: ...


class EMA:
    """Exponential moving average of the model's floating-point state."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.state:
                self.state[k].lerp_(v.detach(), 1 - self.decay)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({**model.state_dict(), **self.state})


@dataclass
class TrainResult:
    step: int
    metrics: dict
    run_dir: Path
    stopped_early: bool = False


def train(task: nn.Module, data: BatchSource, cfg: TrainConfig, run_dir: str | Path, *,
          val_data: BatchSource | None = None, resume: bool | str | Path = False, device: str = "cpu",
          param_groups: Callable[[nn.Module], list] | None = None,
          sample_fn: Callable[[nn.Module, int], None] | None = None,
          meta: dict | None = None, progress: bool = True,
          init_optimizer: Callable[[torch.optim.Optimizer], str] | None = None,
          clock: Callable[[], float] = time.monotonic) -> TrainResult:
    """Run (or resume) training of ``task`` until ``cfg.max_steps``; returns the last metrics. ``init_optimizer``
    loads a fine-tuning start's optimizer state (not on resume); ``clock`` times ``cfg.max_minutes``."""
    run = _Run(task, cfg, Path(run_dir), device, meta)
    run.prepare(resume, param_groups, init_optimizer, clock)
    stop = {"flag": False}
    old = _stop_on_signals(stop) if run.rank == 0 or run.world > 1 else {}
    run.write_config()
    log_f = open(run.run_dir / "metrics.jsonl", "a") if run.rank == 0 else None
    run.t0 = time.time()  # metrics' elapsed_s counts from here
    bar = None
    if progress and run.rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=cfg.max_steps, initial=run.step, dynamic_ncols=True, mininterval=2.0)
    stopped_early = interrupted = False
    last: dict = {}
    try:
        task.train()
        run.budget.start(run.step)
        while run.step < cfg.max_steps:
            last = run.one_step(data)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
            stopping = run.should_stop(stop["flag"])
            run.after_step(last, stopping, log_f, val_data, sample_fn)
            if stopping:
                stopped_early = run.step < cfg.max_steps
                interrupted = stop["flag"] and stopped_early  # a signal; --max-minutes is a planned end
                break
    finally:
        if bar:
            bar.close()
        if log_f:
            log_f.close()
        for sig, h in old.items():
            signal.signal(sig, h)
    return run.finish(last, stopped_early, interrupted, val_data, sample_fn)


def _stop_on_signals(stop: dict) -> dict:
    """SIGTERM / SIGINT set ``stop["flag"]`` (the loop saves a checkpoint and stops); the old handlers."""
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, lambda *_: stop.__setitem__("flag", True))
        except ValueError:  # not the main thread
            pass
    return old


class _Run:
    """One training run's state: the process group, optimizer, LR schedule, EMA, budget and step."""

    def __init__(self, task: nn.Module, cfg: TrainConfig, run_dir: Path, device, meta: dict | None):
        self.task, self.cfg, self.run_dir, self.meta = task, cfg, run_dir, meta
        self.rank, self.world, self.dev = init_distributed(device)
        if cfg.batch_size % self.world:
            raise MaskGITError(f"batch size {cfg.batch_size} is not divisible by the {self.world} processes")
        self.step = 0
        self.t0 = 0.0  # set when the loop starts (metrics' elapsed_s)

    def say(self, text: str) -> None:
        if self.rank == 0:
            log.info(text)

    def prepare(self, resume, param_groups, init_optimizer, clock) -> None:
        task, cfg, dev, rank = self.task, self.cfg, self.dev, self.rank
        torch.manual_seed(cfg.seed + rank)  # the trainer owns the process: dropout uses the global RNG
        task.to(dev)
        from maskgit.inference.precision import amp_choice
        self.use_bf16, self.amp_why = amp_choice(cfg.amp, dev)  # the sampler's rule: bf16 where it is native
        if getattr(task, "channels_last", False):
            # CPU convolutions train faster in NHWC in fp32 (13% of a tokenizer step) but slower under bf16
            # autocast (10%), benchmarks/trainer_profile.py --amp off,bf16
            task.channels_last = dev.type == "cpu" and not self.use_bf16
            if task.channels_last:
                task.to(memory_format=torch.channels_last)
        groups = param_groups(task) if param_groups else _default_groups(task, cfg)
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        ck = find_checkpoint(self.run_dir, resume, say=self.say) if resume else None
        if init_optimizer is not None and ck is None:
            note = init_optimizer(self.opt)
            if note:
                self.say(note)
        self.budget = BudgetSchedule(cfg, clock)  # fits warmup + decay into --max-minutes
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: self.budget.factor(s))
        self.ema = EMA(task.model, cfg.ema) if cfg.ema > 0 else None
        if resume:
            if ck is None:
                self.say(f"no usable checkpoint in {self.run_dir}/checkpoints: starting from scratch")
            else:
                self.step = _restore(ck, task, self.opt, self.sched, self.ema, dev, self.budget)
                self.say(f"resumed from {ck} at step {self.step}")
            if rank == 0:
                truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        self.model_for_ddp = task
        if self.world > 1:
            self.model_for_ddp = nn.parallel.DistributedDataParallel(
                task, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=False)
        self.say(f"precision: {'bf16 autocast' if self.use_bf16 else 'fp32'} ({self.amp_why})")

    def write_config(self) -> None:
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            amp = {"chosen": "bf16" if self.use_bf16 else "fp32", "why": self.amp_why}
            (self.run_dir / "train_config.json").write_text(json.dumps(
                {"train": to_dict(self.cfg), "amp": amp, **(self.meta or {})}, indent=1))

    def one_step(self, data: BatchSource) -> dict:
        """Load, forward, backward, clip, optimizer, LR, EMA; the step's metrics."""
        cfg, dev, task = self.cfg, self.dev, self.task
        t_step = time.perf_counter()
        batch = rank_batch(data, self.step, cfg, self.rank, self.world, dev)
        data_s = time.perf_counter() - t_step  # waiting for the batch (loader workers, or loading in-process)
        ctx = StepContext(self.step, cfg.seed, cfg.batch_size, self.rank, self.world, dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss, metrics = self.model_for_ddp(batch, ctx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.grad_clip))
        self.opt.step()
        self.sched.step()
        if self.ema:
            self.ema.update(task.model)
        self.step += 1
        return {"step": self.step, "loss": float(loss.detach()), "lr": self.sched.get_last_lr()[0],
                **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in metrics.items()},
                "data_s": round(data_s, 5), "step_s": round(time.perf_counter() - t_step, 5)}

    def should_stop(self, signalled: bool) -> bool:
        self.budget.observe(self.step)
        over_time = self.budget.over_time()
        if self.world > 1:  # every rank must agree to stop
            f = torch.tensor([float(signalled or over_time)], device=self.dev)
            dist.all_reduce(f)
            return bool(f.item() > 0)
        return signalled or over_time

    def after_step(self, last: dict, stopping: bool, log_f, val_data, sample_fn) -> None:
        """The metrics line, validation, sample grids and checkpoints that fall on this step."""
        cfg, step = self.cfg, self.step
        if self.rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps or stopping):
            last["elapsed_s"] = round(time.time() - self.t0, 2)
            if val_data is not None and (cfg.eval_every and step % cfg.eval_every == 0):
                last.update(evaluate(self.task, val_data, cfg, self.dev))
            log_f.write(json.dumps(last) + "\n")
            log_f.flush()
        if self.rank == 0 and sample_fn and cfg.sample_every and step % cfg.sample_every == 0:
            sample_fn(self.task, step)
        if cfg.save_every and step % cfg.save_every == 0 or step == cfg.max_steps or stopping:
            if self.rank == 0:
                _save(self.run_dir, step, self.task, self.opt, self.sched, self.ema, cfg, self.meta, self.budget)
            if self.world > 1:
                dist.barrier()

    def finish(self, last: dict, stopped_early: bool, interrupted: bool, val_data, sample_fn) -> TrainResult:
        """The final export (EMA weights), last validation and grids; the stop messages."""
        cfg, step, run_dir = self.cfg, self.step, self.run_dir
        if self.rank == 0 and not interrupted:
            if val_data is not None:
                last.update(evaluate(self.task, val_data, cfg, self.dev))
            _export_final(run_dir, self.task, self.ema, self.meta, last)
            if sample_fn:
                sample_fn(self.task, step)
            plot_metrics(run_dir)
        shutdown_distributed()
        if stopped_early and not interrupted:
            self.say(f"stopped at {step:,} of {cfg.max_steps:,} steps by --max-minutes {cfg.max_minutes:g}: expect "
                     f"lower quality than the full run; rerun with more minutes, or drop --max-minutes for the step "
                     f"budget")
        if interrupted:  # a resumable checkpoint of this step is saved; final/ is only for a completed run
            self.say(f"interrupted at step {step} of {cfg.max_steps}: saved {run_dir}/checkpoints/step_{step:08d}; "
                     f"run the same command with --resume to continue")
            raise TrainingInterrupted(f"interrupted at step {step}")
        return TrainResult(step, last, run_dir, stopped_early)


def _default_groups(task: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Weight decay on matrices only (no decay on biases, norms, embeddings' biases, codebooks)."""
    decay, no_decay = [], []
    for n, p in task.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "codebook" not in n else no_decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(task: nn.Module, data: BatchSource, cfg: TrainConfig, dev) -> dict:
    """Mean of the task's metrics over ``cfg.val_batches`` fixed validation batches (eval mode)."""
    task.eval()
    sums: dict[str, float] = {}
    n = min(cfg.val_batches, max(1, len(data) // cfg.batch_size))
    bs = min(cfg.batch_size, len(data))
    for i in range(n):
        idx = torch.arange(i * bs, (i + 1) * bs) % len(data)
        batch = {k: v.to(dev) for k, v in data.batch(idx).items()}
        loss, metrics = task(batch, StepContext(10 ** 9 + i, cfg.seed, bs, 0, 1, dev))
        for k, v in {"loss": loss, **metrics}.items():
            sums["val_" + k] = sums.get("val_" + k, 0.0) + float(v) / n
    task.train()
    return sums


def _save(run_dir, step, task, opt, sched, ema, cfg, meta, budget: BudgetSchedule | None = None) -> None:
    ck = run_dir / "checkpoints" / f"step_{step:08d}"
    tensors, opt_info = optimizer_to_flat(opt)
    tensors.update({f"task.{k}": v for k, v in checkpoint_state(task).items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if ema:
        tensors.update({f"ema.{k}": v for k, v in ema.state.items()})
    info = {"step": step, "optimizer": opt_info, "scheduler": sched.state_dict(), "train": to_dict(cfg)}
    if budget is not None:
        info["budget"] = budget.state()
    with atomic_dir(ck) as tmp:
        names = ["config.json", "model.safetensors"]
        if hasattr(task, "write_model"):  # a model outside the project's kinds (aMUSEd) writes its own files
            names = task.write_model(tmp, task.model, meta, final=False)
        else:
            save_model(task.model, tmp / "model", meta=meta)
            for f in names:
                os.replace(tmp / "model" / f, tmp / f)
            (tmp / "model" / MANIFEST).unlink()
            (tmp / "model").rmdir()
        save_train_state(tmp, tensors, info)
        write_manifest(tmp, [*names, "train_state.json", "train_state.safetensors"])
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    for old in ckpts[:-max(1, cfg.keep_last)]:
        import shutil
        shutil.rmtree(old, ignore_errors=True)


def _restore(ck: Path, task, opt, sched, ema, dev, budget: BudgetSchedule | None = None) -> int:
    tensors, info = load_train_state(ck)
    task_state = {k[5:]: v for k, v in tensors.items() if k.startswith("task.")}
    missing = set(checkpoint_state(task)) - set(task_state)
    if missing:
        raise MaskGITError(f"{ck}: the checkpoint does not match this model/task (missing {sorted(missing)[:3]})")
    task.load_state_dict({**task.state_dict(), **task_state})  # a frozen base left out comes from the --init
    optimizer_from_flat(opt, {k: v.to(dev) for k, v in tensors.items() if k.startswith("opt.")}, info["optimizer"])
    sched.load_state_dict(info["scheduler"])
    if budget is not None:
        budget.restore(info.get("budget"))
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    if ema:
        ema.state = {k[4:]: v.to(dev) for k, v in tensors.items() if k.startswith("ema.")}
    return int(info["step"])


def _export_final(run_dir: Path, task, ema, meta, metrics) -> None:
    """``run_dir/final``: the trained model (EMA weights when EMA is on) as config.json + model.safetensors; with
    LoRA adapters the adapter folder alone (training.lora.save_lora); a task's ``write_model`` writes its own."""
    model = task.model
    if ema:
        import copy
        model = copy.deepcopy(model)
        ema.copy_to(model)
    meta = {**(meta or {}), "final_metrics": metrics}
    if hasattr(task, "write_model"):
        with atomic_dir(run_dir / "final") as tmp:
            task.write_model(tmp, model, meta, final=True)
    elif lora_modules(model):  # LoRA: the adapter alone, for maskgit.load(BASE, lora=final)
        with atomic_dir(run_dir / "final") as tmp:
            write_manifest(save_lora(model, tmp, meta=meta), [CONFIG_NAME, WEIGHTS_NAME])
    else:
        save_model(model, run_dir / "final", meta=meta)


def rank_batch(data: BatchSource, step: int, cfg: TrainConfig, rank: int, world: int, dev) -> dict:
    """This rank's rows ``[rank::world]`` of the global batch of ``step`` (``batch_indices``): a streaming
    source loads only them; any other source loads the global batch and keeps them. On ``dev``."""
    if hasattr(data, "rank_batch"):
        batch = data.rank_batch(step, cfg.batch_size, cfg.seed, rank, world, dev)
    else:
        batch = {k: v[rank::world] for k, v in data.batch(batch_indices(step, len(data), cfg.batch_size,
                                                                        cfg.seed)).items()}
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
