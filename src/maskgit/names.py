"""Model names -> pipeline folders, one rule for ``maskgit.load``, every ``--model`` flag and the server: an
existing local directory wins; then the models shipped in the package; then Google's official names (downloaded
and converted once, ``storage.download``); then any Hugging Face Hub repo id, ``owner/name[@revision]``
(``storage.hub``)."""

from __future__ import annotations

from pathlib import Path

from maskgit.errors import MaskGITError

WEIGHTS_DIR = Path(__file__).parent / "weights"  # the shipped models
DEFAULT_MODEL = "fashion-mnist"


def shipped_models() -> list[str]:
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "maskgit").is_dir()) if WEIGHTS_DIR.exists() else []


def official_models() -> list[str]:
    from maskgit.storage.download import OFFICIAL_MODELS
    return list(OFFICIAL_MODELS)


def resolve(model: str | Path | None) -> Path:
    """A local directory, a shipped name, an official name or a Hub repo id -> the pipeline directory."""
    if model is None:
        model = DEFAULT_MODEL
    p = Path(model)
    if p.exists():
        return p
    name = str(model)
    if name in shipped_models():
        return WEIGHTS_DIR / name
    if name in official_models():
        from maskgit.storage.download import official_pipeline
        return official_pipeline(name)
    from maskgit.storage.hub import parse_repo_id
    repo = parse_repo_id(name)
    if repo is not None:
        from maskgit.storage.hub import snapshot
        return snapshot(*repo)
    raise MaskGITError(f"no model {name!r}: not a local directory (one with tokenizer/ and maskgit/ inside, or a "
                       f"transformer checkpoint whose config names its tokenizer), a shipped name "
                       f"({', '.join(shipped_models()) or 'none installed'}), an official name "
                       f"({', '.join(official_models())}) or a Hugging Face Hub repo id (owner/name[@revision])")
