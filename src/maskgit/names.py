"""Model names -> pipeline folders: a local directory wins, then the models shipped in the package."""

from __future__ import annotations

from pathlib import Path

from maskgit.errors import MaskGITError

WEIGHTS_DIR = Path(__file__).parent / "weights"  # the shipped models
DEFAULT_MODEL = "fashion-mnist"


def shipped_models() -> list[str]:
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "maskgit").is_dir()) if WEIGHTS_DIR.exists() else []


def resolve(model: str | Path | None) -> Path:
    """A shipped model name or a directory -> the pipeline directory."""
    if model is None:
        model = DEFAULT_MODEL
    p = Path(model)
    if p.exists():
        return p
    if str(model) in shipped_models():
        return WEIGHTS_DIR / str(model)
    raise MaskGITError(f"no model {str(model)!r}: give a directory (with tokenizer/ and maskgit/ inside, or a "
                       f"transformer checkpoint whose config names its tokenizer) or a shipped name "
                       f"({', '.join(shipped_models()) or 'none installed'})")
