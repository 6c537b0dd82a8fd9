"""`python -m gpurun.runner --config job.toml [--resume]`: train one LoRA, JSON-lines events on stdout.

Exit codes: 0 done; 1 the run failed (an error event says why and what to change); 2 bad invocation;
143 stopped by SIGTERM after saving a checkpoint and the state.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from gpurun import events
from gpurun.errors import GpurunError
from gpurun.runner.quiet import quiet_libraries


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gpurun.runner",
        description="Train a kohya-compatible LoRA from a training_config.toml; progress as JSON lines on stdout.",
    )
    parser.add_argument("--config", required=True, help="kohya-style training_config.toml (paths relative to it)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="continue from <output_dir>/state, or from the given state folder",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_libraries()
    try:
        # imported inside the try: a training stack that fails to import still ends as an error event on stdout
        # (the client reads nothing else), and a bad invocation is refused before the slow imports
        from gpurun.runner.train import Trainer
        from gpurun.trainconfig import TrainConfig

        config = TrainConfig.from_toml(args.config)
        return Trainer(config, resume=args.resume).run()
    except GpurunError as exc:
        events.emit(events.ErrorEvent(message=exc.one_line(), hint=exc.hint or "", code=type(exc).__name__))
        return 1
    except Exception as exc:  # the client shows this; the traceback goes to stderr for `gpurun logs`
        traceback.print_exc(file=sys.stderr)
        events.emit(
            events.ErrorEvent(
                message=f"the runner crashed: {type(exc).__name__}: {exc}",
                hint="see runner.stderr (gpurun logs RUN) for the traceback",
                code="crash",
            )
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
