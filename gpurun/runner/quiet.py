"""Keep library chatter out of the event stream: the runner's stdout carries JSON lines only."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def quiet_libraries() -> None:
    """Library logs to stderr at ERROR; tokenizers without threads. Called first by every runner entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers/diffusers log through their own handlers; their notices would crowd the stderr tail that
    # the client shows when the runner fails
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    warnings.simplefilter("default")
    for name in ("diffusers", "transformers", "peft", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
