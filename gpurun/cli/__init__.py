"""The `gpurun` command line: parse, call the library (`gpurun.api`), render. Never imports torch.

One module per command group (dataset, offers, train, sample, resume, runs, report, providers, config), each adding its
commands to the root app (app.py); what train and sample share (the plan, the confirmation, the live run) in
renting.py; shared options in options.py, Ctrl-C handling in signals.py, output in render.py (text,
JSON, errors) and live.py (a run's progress). Every command that reports data takes `--json`; a GpurunError is
one line (what, where, how to fix), exit code 1, never a traceback. Imports stay light: the library is imported
inside the commands, so `gpurun --help` loads neither httpx nor torch.
"""

from gpurun.cli import config, dataset, offers, providers, report, resume, runs, sample, train
from gpurun.cli.app import app, main

for _group in (dataset, offers, train, sample, resume, runs, report, providers, config):
    _group.register(app)

__all__ = ["app", "main"]
