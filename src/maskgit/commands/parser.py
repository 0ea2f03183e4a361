"""The argument parser of every subcommand: --help shows the default of each option that has one; the flags made
from config dataclasses (``add_dataclass_args``, ``add_sample_args``) and the reading of them back into configs."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import typing
from typing import Any


def _has_default(action: argparse.Action) -> bool:
    """A value worth showing: not None, not a switch's True/False, not suppressed (0 and "" are shown)."""
    d = action.default
    return bool(action.option_strings) and d is not None and not isinstance(d, bool) and d != argparse.SUPPRESS


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when it has a default and the help does not already state one.
    Dataclass flags (``add_dataclass_args``) have default None and state the config's value themselves."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not _has_default(action) or "default" in text or text == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _has_default(action):  # argparse prints no help line at all for these
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class CommandParser(argparse.ArgumentParser):
    """``add_subparsers(parser_class=CommandParser)``: every subcommand (and its own subcommands) formats its help
    with ``DefaultsFormatter``."""

    def __init__(self, *args, **kwargs):
        fc = kwargs.get("formatter_class", argparse.HelpFormatter)
        if not issubclass(fc, DefaultsFormatter):  # keep a command's own layout (e.g. a raw description)
            fc = DefaultsFormatter if fc is argparse.HelpFormatter else type(f"Defaults{fc.__name__}",
                                                                              (DefaultsFormatter, fc), {})
        kwargs["formatter_class"] = fc
        super().__init__(*args, **kwargs)


# ---------------------------------------------------------------- flags made from config dataclasses

def add_dataclass_args(parser, cls: type | Any, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field (defaults None = keep the config's value). ``cls`` may be an
    instance: its values are then the defaults shown, so pass the very config the command overrides. What help
    shows is kept in ``parser.config_defaults`` ({dest: value}) for the test that checks it against the run."""
    defaults = None if isinstance(cls, type) else cls
    cls = type(cls) if defaults is not None else cls
    hints = typing.get_type_hints(cls)
    if not hasattr(parser, "config_defaults"):
        parser.config_defaults = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        tp = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else (
            f.default if f.default is not dataclasses.MISSING else None)
        parser.config_defaults[prefix + f.name] = default
        if tp is bool:
            parser.add_argument(flag, dest=prefix + f.name, default=None,
                                type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                                help=f"true/false (default {default})")
        elif typing.get_origin(tp) is tuple:
            parser.add_argument(flag, dest=prefix + f.name, default=None,
                                type=lambda s: tuple(int(x) for x in s.split(",")),
                                help=f"comma-separated ints (default {','.join(map(str, default))})")
        else:
            parser.add_argument(flag, dest=prefix + f.name, default=None, type=tp, help=f"(default {default})")


def override(cfg: Any, args: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> Any:
    """Return ``cfg`` with every field that was given on the command line replaced (except those in ``skip``, which
    a command parses its own way, e.g. comma-separated lists)."""
    changes = {}
    for f in dataclasses.fields(cfg):
        v = None if f.name in skip else getattr(args, prefix + f.name, None)
        if v is not None:
            changes[f.name] = v
    return dataclasses.replace(cfg, **changes)


# ---------------------------------------------------------------- decoding flags of sample / edit

SAMPLE_HELP = {
    "steps": "decoding steps T",
    "schedule": "mask schedule gamma: {choices}",
    "temperature": "token sampling temperature (0 = greedy)",
    "top_k": "sample only among the k most likely tokens (0 = off)",
    "top_p": "nucleus sampling: only the most likely tokens holding this probability mass (1 = off)",
    "choice_temperature": "Gumbel noise on the confidences that choose which tokens to keep, annealed to 0 over "
                          "the steps (0 = keep the most confident)",
    "cfg": "classifier-free guidance scale (0 = off; needs a model trained with a 'no class' id)",
    "cfg_schedule": "guidance over the steps: {choices} (linear ramps 0 -> cfg)",
    "cfg_start": "guidance interval: the unconditional pass runs only on steps t whose progress t/T lies in "
                 "[cfg-start, cfg-end); elsewhere one conditional pass (fractions of the steps)",
    "cfg_end": "end of the guidance interval (exclusive; 1 = through the last step)",
    "cfg_every": "the unconditional pass on every K-th guided step only; the guided steps between reuse its "
                 "difference (conditional - unconditional logits): fewer passes (1 = every guided step)",
    "order": "which tokens each step reveals: {choices}",
    "candidates": "decode k images per image and keep the one the model's classifier finds most on-class (k times "
                  "the cost)",
    "sampler": "the decoder's arithmetic: {choices} (amused: the aMUSEd reference scheduler's draws, noise and "
               "mask counts)",
    "cache": "cached decoding: off; everyK (a full step, then K-1 cheap ones: every2 = F,C,F,C,...); or one F "
             "(full) or C (cheap) per step, repeating, e.g. FCCFCC (the first step is always full). A full step "
             "runs the whole transformer and keeps every layer's keys and values; a cheap step runs only the "
             "positions its group of steps will decide, against those cached keys and values. Faster, slightly "
             "different images; the cached steps run eager (--compile applies to uncached decoding); not in the "
             "ONNX runtime",
}


def _sample_choices() -> dict[str, tuple[str, ...]]:
    from maskgit.sampling.arithmetic import ORDERS, SAMPLERS, SCHEDULE_NAMES
    return {"schedule": SCHEDULE_NAMES, "cfg_schedule": ("constant", "linear"), "order": ORDERS, "sampler": SAMPLERS}


def stored_sampling_defaults(model: str | None = None) -> tuple[str, dict]:
    """(name, meta.sampling) of a shipped model (default: the one `sample` uses without --model), read from its
    config.json without loading it; {} when it stores none or cannot be read."""
    import json

    from maskgit.pipeline import DEFAULT_MODEL, WEIGHTS_DIR
    name = model or DEFAULT_MODEL
    try:
        meta = json.loads((WEIGHTS_DIR / name / "maskgit" / "config.json").read_text()).get("meta", {})
        section = meta.get("sampling") or {}
    except (OSError, ValueError, AttributeError):
        section = {}
    return name, section if isinstance(section, dict) else {}


def add_sample_args(parser, skip: tuple[str, ...] = ("start_step",)) -> None:
    """One flag per SampleConfig field (default None: the model's stored setting, else SampleConfig's), with help
    text, the choices of the named ones, and what the default model actually uses."""
    from maskgit.config import SampleConfig
    hints = typing.get_type_hints(SampleConfig)
    choices = _sample_choices()
    name, stored = stored_sampling_defaults()
    for f in dataclasses.fields(SampleConfig):
        if f.name in skip:
            continue
        text = SAMPLE_HELP.get(f.name, "").format(choices=", ".join(choices.get(f.name, ())))
        default = (f"default: the model's own setting; {name}: {stored[f.name]}; without one: {f.default}"
                   if f.name in stored else f"default: {f.default}, unless the model stores its own")
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, type=hints[f.name],
                            metavar="{" + ",".join(choices[f.name]) + "}" if f.name in choices else None,
                            help=f"{text} ({default})")


def explicit_sample_kwargs(args: Any) -> dict:
    """The SampleConfig fields given on a command line (flags left out are None): the model's stored defaults
    fill the rest (``Pipeline.sample_defaults``)."""
    from maskgit.config import SampleConfig
    return {f.name: v for f in dataclasses.fields(SampleConfig)
            if f.name != "start_step" and (v := getattr(args, f.name, None)) is not None}
