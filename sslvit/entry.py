"""The `sslvit` console script. Loading PyTorch takes seconds; Ctrl-C in that time ends with one
line instead of an import traceback."""

import sys


def main() -> int:
    try:
        from sslvit.cli import main as cli_main
    except KeyboardInterrupt:
        print("sslvit: interrupted while starting; nothing was run", file=sys.stderr)
        return 130
    return cli_main()
