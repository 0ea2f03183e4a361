"""A/B of the compiled transformer's shapes: static (``compile_frozen``'s default, one graph per batch size) against
torch's default (``dynamic=None``), where a second batch size recompiles with a symbolic batch dimension.

Each variant lives in its own worker process (dynamo's caches and its automatic-dynamic state are process-wide,
so two variants in one process would share graphs). Both compile with frozen weights, are called at batch 1 and
then at the timed batch (as `maskgit bench speed --batches 1,8` does), and are then timed one forward at a time,
taking turns, so that they share the machine's moments; the idle worker waits on its pipe. ImageNet-256
transformer configuration, random weights (same seed), fp32. Prints % of the matmul peak (probed before and after
each forward, in the worker), median over rounds.

    python benchmarks/compile_ab.py [--batch 8] [--rounds 5]
"""

import argparse
import multiprocessing as mp

VARIANTS = {"static (dynamic=False)": False, "torch default (dynamic=None)": None}


def worker(conn, config: str, batch: int, dynamic) -> None:
    import torch

    from maskgit.config import transformer_preset
    from maskgit.evaluation.speed import between_probes, flops_of
    from maskgit.inference.compile import compile_frozen
    from maskgit.inference.malloc import tune_malloc
    from maskgit.models.transformer import MaskGITTransformer
    tune_malloc()
    torch.manual_seed(0)
    cfg = transformer_preset(config)
    model = MaskGITTransformer(cfg).eval()

    def inputs(b):
        return torch.full((b, cfg.num_tokens), cfg.mask_id), torch.randint(0, cfg.num_classes, (b,))

    one, big = inputs(1), inputs(batch)
    fn = compile_frozen(model, dynamic=dynamic)
    with torch.inference_mode():
        flops = flops_of(lambda: model(*big))
        fn(*one)
        fn(*big)  # the second shape: static -> its own graph; dynamic=None -> a symbolic batch dimension
        conn.send(flops)
        while conn.recv():
            conn.send(between_probes(lambda: fn(*big), flops))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config", default="maskgit-imagenet256")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    conns, procs, flops = {}, [], 0.0
    for name, dynamic in VARIANTS.items():  # compile one at a time
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker, args=(child, args.config, args.batch, dynamic))
        p.start()
        procs.append(p)
        flops = parent.recv()
        conns[name] = parent
    res = {k: [] for k in VARIANTS}
    for _ in range(args.rounds):
        for k, c in conns.items():
            c.send(True)
            res[k].append(c.recv())
    for c in conns.values():
        c.send(False)
    for p in procs:
        p.join()
    print(f"{args.config}, batch {args.batch} after batch 1, one forward ({flops / 1e9:.1f} GFLOP), "
          f"{args.rounds} rounds")
    from maskgit.evaluation.speed import ab_table
    print(ab_table(["compiled shapes", "s per forward (median)", "% of peak (median)", "per round"], res))


if __name__ == "__main__":
    main()
