"""`maskgit export onnx`: write a pipeline as ONNX graphs + a model card, for ``maskgit.runtime`` (no PyTorch)."""

from __future__ import annotations

from pathlib import Path

from maskgit.errors import MaskGITError


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model for other runtimes (ONNX)",
                       description="Export a pipeline: `maskgit export onnx --model M --out DIR` writes "
                                   "transformer.onnx (one decoding step), decoder.onnx, encoder.onnx and "
                                   "model_card.json; run them with maskgit.runtime (numpy + onnxruntime).")
    p.add_argument("format", choices=["onnx"], help="the export format")
    p.add_argument("--model", default=None, help="shipped model name or pipeline directory (default: fashion-mnist)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-encoder", action="store_true", help="skip encoder.onnx (editing needs it)")
    p.add_argument("--int8", action="store_true",
                   help="also write transformer.int8.onnx (onnxruntime dynamic int8 quantisation; load it with "
                        "maskgit.runtime.load(DIR, int8=True))")
    p.add_argument("--portable", action="store_true",
                   help="standard ONNX operators only (for runtimes other than onnxruntime); by default each "
                        "attention is onnxruntime's fused MultiHeadAttention op, which runs faster there")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from maskgit.pipeline import load
    from maskgit.storage.onnx import export_pipeline
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MaskGITError(f"--out {out} is a file: give a directory")
    pipe = load(args.model, "cpu")
    card = export_pipeline(pipe, out, encoder=not args.no_encoder, int8=args.int8, portable=args.portable)
    for name, f in card["files"].items():
        size = (out / f["path"]).stat().st_size / 2 ** 20
        print(f"{name:<16} {out / f['path']}  {size:.1f} MiB  sha256 {f['sha256'][:16]}...")
    print(f"wrote {out / 'model_card.json'} (opset {card['opset']})")
    return 0
