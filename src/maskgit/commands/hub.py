"""``maskgit cache list|rm`` (the converted official models and downloads in $MASKGIT_HOME) and ``maskgit push``
(a pipeline -> a Hugging Face Hub repo in the project's layout, with a model card)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    c = subparsers.add_parser("cache", help="list or free the model cache ($MASKGIT_HOME, ~/.cache/maskgit)",
                              description="The official models are converted once into $MASKGIT_HOME (default "
                                          "~/.cache/maskgit): models/ holds the converted pipelines, downloads/ "
                                          "the raw or partial downloads. Hugging Face Hub repos stay in the "
                                          "Hub's own cache (HF_HUB_CACHE; `hf cache ls`).")
    c.set_defaults(func=lambda args: (c.print_help(), 2)[1])
    sub = c.add_subparsers(dest="cache_command", metavar="ACTION")
    ls = sub.add_parser("list", help="name, size and path of everything cached")
    ls.set_defaults(func=cmd_list)
    rm = sub.add_parser("rm", help="delete cached models or downloads")
    rm.add_argument("names", nargs="+", metavar="NAME", help="a name `cache list` shows, e.g. "
                    "google/maskgit-imagenet256 (its downloads go with it)")
    rm.set_defaults(func=cmd_rm)

    p = subparsers.add_parser("push", help="upload a pipeline to a Hugging Face Hub repo",
                              description="Write the pipeline in the project's layout (tokenizer/ + maskgit/ (+ "
                                          "ar/, features/), each config.json + model.safetensors + manifest.json) "
                                          "with a model card README.md, and upload it (huggingface_hub's "
                                          "upload_folder; the token: HF_TOKEN or `hf auth login`). "
                                          "`maskgit sample --model REPO` then loads it.")
    p.add_argument("--model", required=True, help="the pipeline: a directory or any name --model takes")
    p.add_argument("--repo", required=True, help="owner/name (created if it does not exist)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(func=cmd_push)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def cmd_list(args: argparse.Namespace) -> int:
    from maskgit.storage.download import cache_entries, home
    entries = cache_entries()
    if not entries:
        print(f"nothing cached in {home()}")
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {_size(e.bytes):>10}  {e.path}")
    print(f"total {_size(sum(e.bytes for e in entries))} in {home()}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from maskgit.storage.download import cache_remove
    for name in args.names:
        for path in cache_remove(name):
            print(f"removed {path}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from maskgit.pipeline import load
    from maskgit.storage.hub import _hub
    _hub()  # the one-line install hint before the model loads
    url = load(args.model).push_to_hub(args.repo, private=args.private)
    print(f"pushed {args.model} to {args.repo}: {url} (load it with --model {args.repo})")
    return 0
