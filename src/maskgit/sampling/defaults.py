"""Per-model sampling defaults: the ``sampling`` section of a transformer's config.json metadata, e.g.
``"sampling": {"steps": 8, "choice_temperature": 8.0, "cfg": 0.5}``. Settings it does not name keep
SampleConfig's defaults; an explicit setting in a call, a CLI flag or a request always wins."""

from __future__ import annotations

import dataclasses

from maskgit.config import SampleConfig, from_dict
from maskgit.errors import MaskGITError


def defaults_from_meta(meta: dict | None, where: str = "the model's config.json") -> SampleConfig:
    """SampleConfig from ``meta["sampling"]`` (absent: SampleConfig()); a bad section is a clear MaskGITError."""
    section = (meta or {}).get("sampling")
    if section is None:
        return SampleConfig()
    if not isinstance(section, dict):
        raise MaskGITError(f"{where}: meta.sampling must be an object of SampleConfig fields")
    if section.get("start_step", 0) != 0:  # an export's card lists every field, start_step 0 included
        raise MaskGITError(f"{where}: meta.sampling cannot set start_step (editing chooses it)")
    try:  # SampleConfig checks its fields when it is made
        cfg = from_dict(SampleConfig, section, f"{where} meta.sampling")
    except MaskGITError as e:
        raise MaskGITError(f"{where}: meta.sampling: {e}") from None
    return cfg


def sampling_section(cfg: SampleConfig) -> dict:
    """The fields of ``cfg`` that differ from SampleConfig() (what a model's meta.sampling needs to hold)."""
    base = SampleConfig()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.name != "start_step" and getattr(cfg, f.name) != getattr(base, f.name)}
