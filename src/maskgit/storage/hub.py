"""Hugging Face Hub repos by id (``owner/name``, ``owner/name@revision``) through ``huggingface_hub`` (optional),
in the Hub's own cache (``HF_HUB_CACHE`` / ``HF_HOME``; ``HF_HUB_OFFLINE``, ``HF_TOKEN`` respected), fetching only
the files a layout needs.

Two layouts load: the project's own (``tokenizer/`` + ``maskgit/`` (+ ``ar/``, ``features/``), each
``config.json`` + ``model.safetensors`` + ``manifest.json``, and ``README.md``; strict: any other file, and any
pickle, is refused) and diffusers' aMUSEd layout (``model_index.json`` at the root: safetensors only, the ``.fp16``
variant where it is the only one). ``save_pretrained`` writes the project's layout with a model card built from
the checkpoints' metadata; ``push_to_hub`` uploads it."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from maskgit.errors import MaskGITError
from maskgit.storage.download import offline_reason

REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[^\s@]+))?")
PARTS = ("tokenizer", "maskgit", "ar", "features")  # the first two are required
PART_FILES = ("config.json", "model.safetensors", "manifest.json")
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
LAYOUT = ("a maskgit pipeline repo holds tokenizer/ + maskgit/ (+ ar/, features/), each config.json + "
          "model.safetensors + manifest.json, and README.md")
# diffusers' aMUSEd components: folder -> weight file stem (safetensors only)
AMUSED_WEIGHTS = {"vqvae": "diffusion_pytorch_model", "transformer": "diffusion_pytorch_model",
                  "text_encoder": "model"}
REFUSED_REMOTELY = {  # huggingface_hub's error class -> what it means here
    "RepositoryNotFoundError": "the Hugging Face Hub has no such repo (a private one needs HF_TOKEN)",
    "RevisionNotFoundError": "the Hugging Face Hub repo has no such revision",
    "GatedRepoError": "the Hugging Face Hub repo is gated: accept its terms on huggingface.co and set HF_TOKEN",
    "DisabledRepoError": "the Hugging Face Hub repo is disabled",
}


def parse_repo_id(name: str) -> tuple[str, str | None] | None:
    """``"owner/name[@revision]"`` -> (repo id, revision or None); None for anything that is not a repo id."""
    m = REPO_ID.fullmatch(name)
    if not m or "--" in m["repo"] or ".." in m["repo"] or any(p.endswith((".", "-")) for p in m["repo"].split("/")):
        return None
    return m["repo"], m["revision"]


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise MaskGITError("models from the Hugging Face Hub need the huggingface_hub package: "
                           "pip install huggingface_hub") from None
    return huggingface_hub


def hub_cache_dir() -> Path:
    """The Hub cache as huggingface_hub reads it, from the environment at the time of the call."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    _hub()
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ---------------------------------------------------------------- a repo id -> a local snapshot folder
def snapshot(repo: str, revision: str | None = None) -> Path:
    """The repo's snapshot folder with the files its layout needs (downloaded into the Hub cache when online)."""
    hf = _hub()
    cache = hub_cache_dir()
    label = repo + (f"@{revision}" if revision else "")
    reason = offline_reason()
    if reason is None:
        try:
            files = hf.HfApi().list_repo_files(repo, revision=revision)
        except Exception as e:  # noqa: BLE001 - any failure to reach the Hub falls back to the cache
            if type(e).__name__ in REFUSED_REMOTELY:
                raise MaskGITError(f"no model {label!r}: not a local directory, a shipped or an official name, and "
                                   f"{REFUSED_REMOTELY[type(e).__name__]}") from None
            return _from_cache(cache, repo, revision, label, f"the Hub cannot be reached: {_first_line(e)}")
        patterns = allow_patterns(files, label)
        try:
            folder = hf.snapshot_download(repo, revision=revision, allow_patterns=patterns, cache_dir=str(cache))
        except Exception as e:  # noqa: BLE001
            raise MaskGITError(f"downloading {label} from the Hugging Face Hub failed: {_first_line(e)}") from None
        return _checked(Path(folder), patterns, label)
    return _from_cache(cache, repo, revision, label, f"offline ({reason})")


def cached_snapshot(cache: Path, repo: str, revision: str | None) -> Path | None:
    """``models--owner--name/snapshots/<commit>`` for a commit hash, or the one ``refs/<revision>`` names."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    rev = revision or "main"
    commit = rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None
    if commit is None and (storage / "refs" / rev).is_file():
        commit = (storage / "refs" / rev).read_text().strip()
    folder = storage / "snapshots" / commit if commit else None
    return folder if folder is not None and folder.is_dir() else None


def _from_cache(cache: Path, repo: str, revision: str | None, label: str, why: str) -> Path:
    folder = cached_snapshot(cache, repo, revision)
    if folder is None:
        raise MaskGITError(f"no model {label!r}: not a local directory, and as a Hugging Face Hub repo it is not in "
                           f"the Hub cache ({cache}) while {why}: run once online, or give a local directory")
    files = [f.relative_to(folder).as_posix() for f in sorted(folder.rglob("*")) if f.is_file()]
    return _checked(folder, allow_patterns(files, label), label)


def _checked(folder: Path, needed: list[str], label: str) -> Path:
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise MaskGITError(f"the snapshot of {label} in {folder} lacks {', '.join(missing[:3])}"
                           + (", ..." if len(missing) > 3 else "") + ": fetch it again online")
    return folder


def allow_patterns(files: list[str], label: str) -> list[str]:
    """The files of a repo listing that its layout needs (snapshot_download's allow_patterns), or one
    MaskGITError saying why the repo is not a loadable layout."""
    files = set(files)
    if "model_index.json" in files:
        return _amused_files(files, label)
    pickles = sorted(f for f in files if f.lower().endswith(PICKLES))
    if pickles:
        raise MaskGITError(f"{label} holds pickle files ({', '.join(pickles[:3])}), which are never loaded here: "
                           f"{LAYOUT}")
    allowed = {"README.md", ".gitattributes"} | {f"{p}/{n}" for p in PARTS for n in (*PART_FILES, "README.md")}
    unknown = sorted(files - allowed)
    if unknown:
        raise MaskGITError(f"{label} is not a maskgit pipeline repo: unexpected {', '.join(unknown[:3])}"
                           + (", ..." if len(unknown) > 3 else "") + f"; {LAYOUT}")
    present = [p for p in PARTS if p in ("tokenizer", "maskgit") or any(f.startswith(p + "/") for f in files)]
    missing = [f"{p}/{n}" for p in present for n in PART_FILES if f"{p}/{n}" not in files]
    if missing:
        raise MaskGITError(f"{label} is not a complete maskgit pipeline repo: no {', '.join(missing[:3])}; {LAYOUT}")
    return sorted(files - {".gitattributes"})


def _amused_files(files: set[str], label: str) -> list[str]:
    """model_index.json, scheduler/*.json, each component's config.json + safetensors weights (the fp16 variant
    only where it is the only one; never a .bin), tokenizer/*.json|txt."""
    need = ["model_index.json", *sorted(f for f in files if f.startswith("scheduler/") and f.endswith(".json"))]
    for comp, stem in AMUSED_WEIGHTS.items():
        full, half = f"{comp}/{stem}.safetensors", f"{comp}/{stem}.fp16.safetensors"
        weights = full if full in files else half if half in files else None
        if f"{comp}/config.json" not in files or weights is None:
            raise MaskGITError(f"{label} has model_index.json but no {comp}/config.json + {full} (or its .fp16 "
                               f"variant): not an aMUSEd repo this package reads (pickled .bin weights never load)")
        need += [f"{comp}/config.json", weights]
    tok = sorted(f for f in files if f.startswith("tokenizer/") and f.endswith((".json", ".txt")))
    if not tok:
        raise MaskGITError(f"{label} has model_index.json but no tokenizer/ files: not an aMUSEd repo")
    return need + tok


# ---------------------------------------------------------------- writing and pushing the project's layout
def _parts(pipe) -> dict:
    from maskgit.inference.kernels import plain_linears
    from maskgit.storage.checkpoint import kind_of
    if pipe.precision != "fp32":
        raise MaskGITError(f"this pipeline runs at {pipe.precision}; saving needs its fp32 weights: load it with "
                           f"precision='fp32'")
    parts = {"tokenizer": pipe.tokenizer, "maskgit": plain_linears(pipe.transformer),
             "ar": plain_linears(pipe.ar) if pipe.ar is not None else None, "features": pipe.features}
    for part, m in parts.items():
        if m is not None:
            try:
                kind_of(m)
            except MaskGITError:
                raise MaskGITError(f"save_pretrained writes the project's own layout; this pipeline's {part} is a "
                                   f"{type(m).__name__} (an aMUSEd pipeline keeps diffusers' layout)") from None
    return {k: m for k, m in parts.items() if m is not None}


def save_pretrained(pipe, directory: str | Path, name: str | None = None) -> Path:
    """``pipe`` -> ``directory`` in the project's layout (each part with its manifest) + a model card, atomically.
    An existing directory is replaced only when it is empty or a pipeline folder."""
    from maskgit.storage.checkpoint import save_model
    from maskgit.storage.files import atomic_dir
    parts = _parts(pipe)
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or (any(directory.iterdir())
                                                           and not (directory / "maskgit").is_dir())):
        raise MaskGITError(f"{directory} exists and is not a pipeline folder: choose a new or empty directory")
    with atomic_dir(directory) as tmp:
        for part, m in parts.items():
            meta = dict(getattr(m, "meta", None) or {})
            if part == "maskgit":
                meta.pop("tokenizer", None)  # a local path; the layout itself names the tokenizer
            save_model(m, tmp / part, meta=meta)
        (tmp / "README.md").write_text(model_card(parts, name or directory.resolve().name))
    return directory


def push_to_hub(pipe, repo: str, token: str | None = None, private: bool = False,
                commit_message: str | None = None) -> str:
    """save_pretrained into the Hub repo ``repo`` (created if needed; stale part files replaced) with
    ``HfApi().upload_folder``. Returns the commit's URL."""
    hf = _hub()
    if parse_repo_id(repo) is None or "@" in repo:
        raise MaskGITError(f"{repo!r} is not a Hugging Face Hub repo id (owner/name)")
    with tempfile.TemporaryDirectory(prefix="maskgit-push-") as d:
        folder = save_pretrained(pipe, Path(d) / "pipeline", name=repo)
        api = hf.HfApi(token=token)
        try:
            api.create_repo(repo, token=token, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo, folder_path=str(folder), token=token,
                                     commit_message=commit_message or "Upload maskgit pipeline",
                                     delete_patterns=[f"{p}/*" for p in PARTS])
        except Exception as e:  # noqa: BLE001 - the Hub's errors, as one line
            raise MaskGITError(f"pushing to {repo} failed: {_first_line(e)}") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}")


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(parts: dict, name: str) -> str:
    """README.md: what the pipeline is, how to use it, and the config, command and metrics its metadata carries."""
    from maskgit.config import to_dict
    tok, tr = parts["tokenizer"], parts["maskgit"]
    c, meta = tr.config, getattr(tr, "meta", None) or {}
    size = c.grid_size * tok.config.downsample
    names = meta.get("class_names") or []
    if c.text_dim:
        what, use, py = "text-conditioned", '--prompt "a red circle"', 'prompts=["a red circle"]'
    elif c.num_classes:
        what, use, py = f"class-conditional ({c.num_classes} classes)", "--labels 0", "[0]"
    else:
        what, use, py = "unconditional", "--num 4", "num=4"
    lines = ["---", "library_name: maskgit", "tags:", "- maskgit", "- image-generation", "---", "", f"# {name}", "",
             f"A {what} [MaskGIT](https://arxiv.org/abs/2202.04200) pipeline for the `maskgit` package "
             f"(`pip install maskgit-suite`): {size}x{size} px, {c.grid_size}x{c.grid_size} tokens of "
             f"{tok.config.codebook_size} codes.", "",
             "## Use", "", "```bash", f"maskgit sample --model {name} {use} --out samples.png", "```", "",
             "```python", "import maskgit", f'pipe = maskgit.load("{name}")', f"images = pipe.generate({py}, seed=0)",
             "```", "", "## Parts", "", "| folder | model | parameters |", "|---|---|---|"]
    for part, m in parts.items():
        n = sum(p.numel() for p in m.parameters()) / 1e6
        lines.append(f"| `{part}/` | {type(m).__name__} | {n:.2f}M |")
    sections = {"Source": [], "Training": [], "Metrics": []}
    for part, m in parts.items():
        pm = getattr(m, "meta", None) or {}
        if pm.get("source"):
            sections["Source"].append(f"- `{part}/`: {pm['source']}"
                                      + (f" (from `{pm['converted_from']}`)" if pm.get("converted_from") else ""))
        if pm.get("command"):
            sections["Training"].append(f"- `{part}/`: `{pm['command']}`")
        metrics = pm.get("final_metrics") or pm.get("metrics")
        if isinstance(metrics, dict) and metrics:
            sections["Metrics"].append(f"- `{part}/`: " + ", ".join(f"{k} {_num(v)}" for k, v in metrics.items()))
    for title, body in sections.items():
        if body:
            lines += ["", f"## {title}", "", *body]
    if names:
        shown = ", ".join(f"{i} {n}" for i, n in enumerate(names[:20])) + (", ..." if len(names) > 20 else "")
        lines += ["", "## Classes", "", f"{len(names)} classes (all in `maskgit/config.json`): {shown}"]
    if meta.get("sampling"):
        lines += ["", "## Sampling defaults", "", f"`{json.dumps(meta['sampling'])}`"]
    lines += ["", "## Configs", "", "```json",
              json.dumps({p: to_dict(m.config) for p, m in parts.items()}, indent=1), "```", ""]
    return "\n".join(lines)
