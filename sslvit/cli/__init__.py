"""The `sslvit` command line: parses, wires, and calls into the layers below.

One module per topic holds its commands (`cmd_*`) and the parsers that call them (`add_*`);
`sslvit.cli.options` holds the options several commands share.
"""

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from sslvit.cli.evaluate import add_eval, add_finetune, cmd_eval, cmd_finetune
from sslvit.cli.features import add_features
from sslvit.cli.pretrain import add_demo, add_pretrain, cmd_demo, cmd_pretrain
from sslvit.cli.segment import add_segment, cmd_segment
from sslvit.cli.show import add_export, add_show

__all__ = ["main", "parser"]


def _after_interrupt(args: argparse.Namespace) -> str:
    """What to type next after Ctrl-C, for the command that was stopped."""
    if args.func is cmd_demo:
        return "run `sslvit demo` again to continue the run from its last checkpoint"
    if args.func is cmd_eval and args.kind == "efficiency":
        return "finished results stay in eval/efficiency.json; the same command runs the rest"
    if args.func is cmd_pretrain:
        if not getattr(args, "out", None):  # stopped before its folder was decided
            return "no checkpoint was written yet; run the same command again (without --resume)"
        out = Path(args.out)
        if (out / "checkpoints" / "last.pt").is_file():
            return f"the last checkpoint is kept; continue with --out {out} --resume"
        return "no checkpoint was written yet; run the same command again (without --resume)"
    if args.func in (cmd_finetune, cmd_segment):
        checkpoints = Path(args.out) / "checkpoints"
        kept = sorted(p.name for p in checkpoints.glob("*.pt")) if checkpoints.is_dir() else []
        where = f"{', '.join(kept)} kept in {checkpoints}" if kept else "no checkpoint yet"
        return f"{where}; this command does not resume: run it again with another --out"
    return "stopped"


class _OneLineErrors(argparse.ArgumentParser):
    """A command-line mistake is one line naming it and where help is, not the usage block
    (every sub-command's parser is of this class too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _OneLineErrors(
        prog="sslvit", description="Self-supervised pretraining of Vision Transformers."
    )
    sub = p.add_subparsers(dest="command", required=True)
    add_pretrain(sub)
    add_eval(sub)
    add_finetune(sub)
    add_segment(sub)
    add_show(sub)
    add_export(sub)
    add_demo(sub)
    add_features(sub)
    return p


class _TaggedFormatter(logging.Formatter):
    """Progress lines as `time message`; warnings and errors as `time WARNING message`, so a
    collapse warning or a skipped file stands out from the steps around it."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")
        self._tagged = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return self._tagged.format(record)
        return super().format(record)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TaggedFormatter())
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=[handler])
    from sslvit.models.io import WriteError
    from sslvit.train.checkpoint import Terminated, raise_terminated
    from sslvit.train.loop import NonFiniteLossError

    # `kill` or a job scheduler stops a run the way Ctrl-C does: checkpoints finish writing,
    # and the message says how to go on
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"sslvit: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"sslvit: stopped: {err}", file=sys.stderr)
        return 1
    except WriteError as err:
        print(f"sslvit: stopped: {err}; {_after_interrupt(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        # on a terminal the progress bar holds the line (and the ^C after it)
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}sslvit: {what}; {_after_interrupt(args)}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
