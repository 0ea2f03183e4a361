"""`maskgit bench`: the benchmark tables of benchmarks/RESULTS.md, each written with the command that made it.

  table      MaskGIT at T=4,8,12,16 vs the AR baseline (with/without KV cache): FD, class agreement, speed
  schedules  FD vs T for every mask schedule (the paper's Table 3)
  tradeoff   FD / precision / recall vs choice temperature and vs CFG scale at T=8
  speed      random-weight speed at the ImageNet-256 configuration (24x768, 256 tokens) + VQGAN decoder
  int8       the opt-in CPU int8 mode vs fp32: quality (FD, class agreement) and speed on the shipped model
  scaling    s/image vs token grid (16x16, 32x32), steps and batch, with the AR baseline (random weights)
  precision  bf16 and int8 vs fp32 with the same seeds: FD, class agreement, tokens equal to fp32, speed
  samplers   decoding orders (confidence/halton/random) vs T; choice temperature x CFG x order at T=8 + Pareto
  frontier   quality (FD in two feature spaces, class agreement; 3 seeds) vs cost for plain T, cached decoding and
             guidance intervals; cost also on the ImageNet configs (random weights) with FLOPs; a plot
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskgit.commands.common import device_arg, parse_ints, resolve_device
from maskgit.errors import MaskGITError
from maskgit.evaluation.plots import line_plot

PLOTS = Path("benchmarks/plots")


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (print a table; --results FILE writes it there; draws plots)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["table", "schedules", "tradeoff", "speed", "int8", "precision", "scaling",
                                        "samplers", "frontier"])
    p.add_argument("--model", default=None, help="shipped model name or pipeline directory")
    p.add_argument("--num", type=int, default=1000, help="samples per quality row")
    p.add_argument("--steps", default="4,8,12,16", help="T values (table, schedules)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=None,
                   help="write the table into this Markdown file (its section of the same title is replaced), e.g. "
                        "benchmarks/RESULTS.md; default: print only")
    p.add_argument("--plots", default=str(PLOTS))
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    p.add_argument("--config", default="maskgit-imagenet256", help="speed: transformer preset")
    p.add_argument("--batches", default="1,8", help="speed: batch sizes")
    p.add_argument("--grids", default="16,32", help="scaling: token grid sides")
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="scaling: skip points whose batch x tokens exceed this")
    p.add_argument("--precision", default="auto", help="scaling, frontier: auto, fp32 or bf16")
    p.add_argument("--precisions", default="auto",
                   help="speed: comma-separated fp32,bf16; auto = fp32, plus bf16 where the hardware has it")
    p.add_argument("--candidates", default="",
                   help="samplers: also classifier-guided selection among k candidates, e.g. 4")
    p.add_argument("--shard", default="", help="samplers: I/N measures only its share of the points "
                   "(run N processes, then once without --shard for the tables)")
    p.add_argument("--points", default="", help="samplers: keep every measured point as JSON in this "
                   "folder (resume, shards)")
    p.add_argument("--seeds", default="1,2,3", help="frontier: sampling seeds (mean and spread)")
    p.add_argument("--settings", default=None,
                   help="frontier: names of its settings, separated by ';' (every setting when left out)")
    p.add_argument("--cost-only", action="store_true", help="frontier: only the random-weight timing (no sampling "
                   "on --model, no quality table)")
    p.add_argument("--configs", default="maskgit-imagenet256,maskgit-imagenet512",
                   help="frontier: transformer presets timed with random weights ('' for none)")
    p.add_argument("--no-ar-nocache", action="store_true", help="speed: skip the slow AR run without cache")
    p.add_argument("--int8", action="store_true",
                   help="speed: also time the transformer with int8 dynamic quantisation (CPU; nominal FLOPs)")
    p.add_argument("--compile", action="store_true",
                   help="speed: also time torch.compile'd transformer and decoder (needs a C++ compiler; slow start)")
    device_arg(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    command = args.command_line
    if args.what == "speed":
        return _speed(args, command)
    if args.what == "scaling":
        return _scaling(args, command)
    if args.what == "frontier":
        spec = _frontier_spec(args)  # every argument checked before the model loads
        if args.cost_only:
            return _frontier(args, command, spec, None, None)
    b = _Bench(args)
    if args.what == "frontier":
        return _frontier(args, command, spec, b.pipe, b.ev)
    if args.what == "samplers":
        return _samplers(args, command, b)
    from maskgit.evaluation.samples import append_results, markdown_table
    rows, cols, title = {"table": _table, "schedules": _schedules, "int8": _precision, "precision": _precision,
                         "tradeoff": _tradeoff}[args.what](args, b)
    table = markdown_table(rows, cols)
    print(table)
    append_results(args.results, title, command, table)
    return 0


class _Bench:
    """The model, evaluator, labels and step list a quality table runs on."""

    def __init__(self, args):
        from maskgit.commands.evaluate import evaluator_for
        from maskgit.config import SampleConfig
        from maskgit.evaluation.samples import uniform_labels
        from maskgit.pipeline import load
        self.args = args
        self.pipe = load(args.model, resolve_device(args.device))
        self.pipe.sample_defaults = SampleConfig()  # the tables vary knobs around SampleConfig, not a model's own
        self.ev = evaluator_for(self.pipe, None, args.data, args.split)
        self.labels = uniform_labels(args.num, self.pipe.transformer.config.num_classes)
        self.steps = parse_ints(args.steps, "--steps")
        self.plots = Path(args.plots)

    def quality(self, arch, kw, use_cache=True):
        from maskgit.evaluation.samples import generate
        images, sec = generate(self.pipe, self.labels, arch, kw, self.args.seed, self.args.batch_size, use_cache)
        return self.ev(images, self.labels), sec / len(self.labels)

    def floor(self) -> dict:
        """The metrics of as many real training images: what a perfect model would score."""
        from maskgit.evaluation.samples import load_real
        size = self.pipe.grid[0] * self.pipe.tokenizer.config.downsample
        args = self.args
        return self.ev(load_real(args.data, "train", size, args.num), labels_of_train(args, size, args.num))


def _speed(args, command: str) -> int:
    from maskgit.evaluation.samples import append_results
    from maskgit.evaluation.speed import SpeedSpec, run_speed
    spec = SpeedSpec(config=args.config, batches=tuple(parse_ints(args.batches, "--batches")),
                     precisions=tuple(p for p in args.precisions.split(",") if p), repeats=args.repeats,
                     compile=args.compile, int8=args.int8, no_ar_nocache=args.no_ar_nocache)
    result = run_speed(spec, resolve_device(args.device))
    print(result.table)
    append_results(args.results, result.title, command, result.table, notes=result.notes)
    return 0


def _samplers_spec(args, b: _Bench):
    from maskgit.evaluation.samplers import SamplersSpec
    return SamplersSpec(steps=tuple(b.steps), seed=args.seed, batch_size=args.batch_size,
                        candidates=tuple(int(k) for k in args.candidates.split(",") if k),
                        shard=tuple(int(v) for v in args.shard.split("/")) if args.shard else None,
                        points=Path(args.points) if args.points else None, plots=Path(args.plots))


def _samplers(args, command: str, b: _Bench) -> int:
    from maskgit.evaluation.samplers import run_samplers
    from maskgit.evaluation.samples import append_results
    spec = _samplers_spec(args, b)
    floor = b.floor()
    second = (f", FD in the independent feature space {floor['fd_independent']:.3f}"
              if "fd_independent" in floor else "")
    note = (f"Real-data floor at the same n: FD {floor['fd_featurenet']:.3f}{second}, class agreement "
            f"{floor.get('class_accuracy', float('nan')):.3f}.")
    for title, table in run_samplers(spec, b.pipe, b.ev, b.labels, line_plot, floor["fd_featurenet"]):
        print(table)
        append_results(args.results, f"{title}: {args.data} ({args.num} samples per point)", command, table,
                       notes=note)
    return 0


def _table(args, b: _Bench):
    from maskgit.evaluation.samples import time_per_image
    pipe = b.pipe
    rows = [{"model": "real train images (floor)", "steps": "-", **_pr(b.floor())}]
    for T in b.steps:
        kw = {"steps": T}
        m, _ = b.quality("maskgit", kw)
        rows.append({"model": "MaskGIT", "steps": T, **_pr(m),
                     "s/img (batch 1)": time_per_image(pipe, "maskgit", 1, kw, args.repeats),
                     "img/s (batch 32)": 1 / time_per_image(pipe, "maskgit", 32, kw, args.repeats)})
    if pipe.ar is not None:
        N = pipe.grid[0] * pipe.grid[1]
        m, _ = b.quality("ar", {})
        for cache in (True, False):
            rows.append({"model": f"AR ({'KV cache' if cache else 'no cache'})", "steps": N, **_pr(m),
                         "s/img (batch 1)": time_per_image(pipe, "ar", 1, {}, args.repeats, cache),
                         "img/s (batch 32)": 1 / time_per_image(pipe, "ar", 32, {}, args.repeats, cache)})
    cols = ["model", "steps", "FD", "class agreement", "precision", "recall", "s/img (batch 1)", "img/s (batch 32)"]
    mg = [r for r in rows if r["model"] == "MaskGIT"]
    series = {"MaskGIT": ([r["steps"] for r in mg], [r["FD"] for r in mg])}
    ar = [r for r in rows if r["model"].startswith("AR (KV")]
    if ar:
        series["AR (256 or h*w steps)"] = ([ar[0]["steps"]], [ar[0]["FD"]])
    line_plot(b.plots / "maskgit_vs_ar_fd.png", series, "decoding steps", "FD (project features)",
              "MaskGIT vs AR: quality")
    lat = {"MaskGIT batch 1": ([r["steps"] for r in mg], [r["s/img (batch 1)"] for r in mg])}
    if ar:
        lat["AR KV cache batch 1"] = ([ar[0]["steps"]], [ar[0]["s/img (batch 1)"]])
    line_plot(b.plots / "latency_vs_steps.png", lat, "decoding steps", "seconds per image", "latency", logy=True)
    return rows, cols, f"Seed's table: MaskGIT vs AR on {args.data} ({args.num} samples per row)"


def _schedules(args, b: _Bench):
    from maskgit.sampling.schedules import SCHEDULES
    rows, series = [], {}
    for name in SCHEDULES:
        xs, ys = [], []
        for T in b.steps:
            m, _ = b.quality("maskgit", {"steps": T, "schedule": name})
            rows.append({"schedule": name, "steps": T, **_pr(m)})
            xs.append(T)
            ys.append(m["fd_featurenet"])
        series[name] = (xs, ys)
    line_plot(b.plots / "fd_vs_steps_per_schedule.png", series, "decoding steps T", "FD (project features)",
              "mask schedules")
    cols = ["schedule", "steps", "FD", "class agreement", "precision", "recall"]
    return rows, cols, f"Mask schedule ablation on {args.data} ({args.num} samples per row)"


def _precision(args, b: _Bench):
    from maskgit.evaluation.precision import compare_precisions
    precs = ["int8"] if args.what == "int8" else ["bf16", "int8"]
    rows = [{"mode": r.pop("precision"), **_pr(r.pop("metrics")), **r}
            for r in compare_precisions(args.model, b.pipe.device.type, precs, b.labels, b.ev, 8, args.seed,
                                        args.batch_size, args.repeats)]
    cols = ["mode", "FD", "class agreement", "precision", "recall", "tokens equal to fp32", "s/img (batch 1)",
            "img/s (batch 32)"]
    return rows, cols, (f"Reduced precision ({', '.join(precs)}) vs fp32, same seeds, T=8, {args.data} "
                        f"({args.num} samples)")


def _tradeoff(args, b: _Bench):
    rows = []
    for ct in (0.0, 1.0, 2.0, 4.5, 8.0):
        m, _ = b.quality("maskgit", {"steps": 8, "choice_temperature": ct})
        rows.append({"knob": "choice temperature", "value": ct, **_pr(m)})
    for cfg in (0.0, 0.5, 1.0, 2.0, 4.0):
        m, _ = b.quality("maskgit", {"steps": 8, "cfg": cfg})
        rows.append({"knob": "CFG scale", "value": cfg, **_pr(m)})
    s1, s2 = {}, {}
    for knob, store in (("choice temperature", s1), ("CFG scale", s2)):
        rs = [r for r in rows if r["knob"] == knob]
        for key in ("FD", "precision", "recall"):
            store[key] = ([r["value"] for r in rs], [r[key] for r in rs])
    line_plot(b.plots / "tradeoff_choice_temperature.png", s1, "choice temperature", "value", "T=8")
    line_plot(b.plots / "tradeoff_cfg.png", s2, "CFG scale", "value", "T=8")
    cols = ["knob", "value", "FD", "precision", "recall", "class agreement"]
    return rows, cols, f"Diversity/fidelity trade-off at T=8 on {args.data} ({args.num} samples per row)"


def _frontier_spec(args):
    from maskgit.config import transformer_preset
    from maskgit.evaluation import frontier as F
    names = [n for n in (args.settings or "").split(";") if n] or list(F.SETTINGS)
    unknown = [n for n in names if n not in F.SETTINGS]
    if unknown:
        raise MaskGITError(f"unknown frontier setting {unknown[0]!r}; the settings: {'; '.join(F.SETTINGS)}")
    spec = F.FrontierSpec(settings={n: F.SETTINGS[n] for n in names}, num=args.num,
                          seeds=tuple(parse_ints(args.seeds, "--seeds")), batch_size=args.batch_size,
                          configs=tuple(c for c in args.configs.split(",") if c),
                          batches=tuple(parse_ints(args.batches, "--batches")), repeats=args.repeats,
                          precision=args.precision)
    for c in spec.configs:
        transformer_preset(c)  # an unknown preset is an error before the quality runs, not after
    return spec


def _frontier(args, command: str, spec, pipe, ev) -> int:
    from maskgit.evaluation import frontier as F
    from maskgit.evaluation.samples import append_results
    say = lambda m: print(m, flush=True)  # noqa: E731
    quality = [] if args.cost_only else F.quality_rows(pipe, ev, spec, say)
    cost = F.cost_rows(spec, say) if spec.configs else []
    if quality or cost:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
        (Path(args.plots) / "frontier.json").write_text(json.dumps({"command": command, "quality": quality,
                                                                    "cost": cost}, indent=1))
    if quality:
        F.plot_frontier(Path(args.plots) / "frontier.png", quality, cost)
    seeds = ", ".join(map(str, spec.seeds))
    for title, table in ((f"Frontier: quality of each setting on {args.model or 'the shipped model'} "
                          f"({args.num} samples per seed, seeds {seeds}; mean ± spread)", F.quality_table(quality)),
                         ("Frontier: cost of each setting, random weights (token decode)", F.cost_table(cost))):
        if table.count("\n") > 1:
            print(table)
            append_results(args.results, title, command, table)
    return 0


def _pr(m: dict) -> dict:
    return {"FD": m["fd_featurenet"], "precision": m["precision_featurenet"], "recall": m["recall_featurenet"],
            "class agreement": m.get("class_accuracy", float("nan"))}


def labels_of_train(args, size, num):
    from maskgit.data.datasets import load_dataset
    ds = load_dataset(args.data, split="train", image_size=size)
    if not hasattr(ds, "targets"):
        raise MaskGITError("the real-data floor needs a labelled dataset")
    return ds.targets[:num]


def _scaling(args, command: str) -> int:
    from maskgit.config import transformer_preset
    from maskgit.evaluation.samples import append_results, markdown_table
    from maskgit.evaluation.scaling import measure_scaling, plot_scaling
    from maskgit.evaluation.speed import machine_line
    device = resolve_device(args.device)
    batches = parse_ints(args.batches, "--batches")
    machine = machine_line(device, transformer_preset(args.config), 1)
    print(machine)
    rows = measure_scaling(args.config, parse_ints(args.grids, "--grids"), parse_ints(args.steps, "--steps"),
                           batches, args.precision, device, max_batch_tokens=args.max_batch_tokens)
    plot_scaling(rows, Path(args.plots) / "scaling_s_per_image.png")
    table = markdown_table(rows, ["model", "grid", "tokens", "steps", "batch", "precision", "s/image"])
    print(table)
    skipped = f" Points with batch x tokens > {args.max_batch_tokens} were not run." if args.max_batch_tokens else ""
    append_results(args.results, f"How sampling cost grows ({args.config}, random weights)", command, table,
                   notes=f"Machine: {machine}. One timed decode per point (transformer only), after one warm-up "
                         f"forward per grid and batch; plot: benchmarks/plots/scaling_s_per_image.png.{skipped}")
    return 0
