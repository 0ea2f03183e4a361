"""MaskGIT in PyTorch: VQGAN tokenizer, bidirectional transformer, iterative parallel decoding and editing.

The public names are imported on first access (PEP 562), so ``import maskgit.runtime`` (numpy + onnxruntime)
works where PyTorch is not installed, and ``import maskgit`` itself does nothing but give the package's logger
its console handler (below).

Library code logs to ``logging.getLogger("maskgit.<module>")``; the ``maskgit`` logger writes each message as a
plain line, INFO to stdout and WARNING and above to stderr. Python sees warnings (unverified weights, a download)
by default and INFO with ``logging.getLogger("maskgit").setLevel("INFO")``; the ``maskgit`` command shows INFO.
An application that routes logging itself removes the handler and sets ``propagate = True``."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING

__all__ = [
           "MaskGITError",
           "Pipeline",
           "SampleConfig",
           "TrainConfig",
           "TransformerConfig",
           "VQGANConfig",
           "decode",
           "load",
           "tokenize_dataset",
           "train_tokenizer",
           "train_transformer",
]
__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "MaskGITError": "maskgit.errors",
    "Pipeline": "maskgit.pipeline",
    "SampleConfig": "maskgit.config",
    "TrainConfig": "maskgit.config",
    "TransformerConfig": "maskgit.config",
    "VQGANConfig": "maskgit.config",
    "decode": "maskgit.sampling.decoding",
    "load": "maskgit.pipeline",
    "tokenize_dataset": "maskgit.train",
    "train_tokenizer": "maskgit.train",
    "train_transformer": "maskgit.train",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from maskgit.config import SampleConfig, TrainConfig, TransformerConfig, VQGANConfig
    from maskgit.errors import MaskGITError
    from maskgit.pipeline import Pipeline, load
    from maskgit.sampling.decoding import decode
    from maskgit.train import tokenize_dataset, train_tokenizer, train_transformer


class _Console(logging.Handler):
    """Each record as ``print`` wrote it: the message alone, INFO and below to stdout, WARNING and above to
    stderr, flushed (the streams looked up per record, so redirection and capture see them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging's rule: a failed emit never raises
            self.handleError(record)


_logger = logging.getLogger(__name__)
if not any(h.get_name() == "maskgit-console" for h in _logger.handlers):  # once, also under importlib.reload
    _console = _Console()
    _console.set_name("maskgit-console")
    _logger.addHandler(_console)
    _logger.propagate = False  # the handler above is the output; the root logger's would print it twice
    if _logger.level == logging.NOTSET:
        _logger.setLevel(logging.WARNING)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'maskgit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
