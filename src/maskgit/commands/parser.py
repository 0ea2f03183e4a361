"""The argument parser of every subcommand: --help shows the default of each option that has one."""

from __future__ import annotations

import argparse
import copy


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
