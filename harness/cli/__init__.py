"""The ``esolm`` command: thin argument parsing over the library.

Each group of commands lives in its own module with a ``register(subparsers)`` that adds its
parsers; a new command is a module and one line in :data:`COMMAND_MODULES`.

Bad input (a config with an unknown key, a missing file, a length above the model's, a
checkpoint of another model) ends with one line ``esolm: error: ...`` and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.cli import estimator_commands, model_commands, results_commands, tool_commands
from harness.cli.model_commands import schedule_from_args  # noqa: F401  (the sample flags' schedule)

# in the order --help lists them
COMMAND_MODULES = [model_commands, results_commands, tool_commands, estimator_commands]


class DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with the flag's default, unless the text already says it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)".strip()


class OneLineParser(argparse.ArgumentParser):
    """argparse errors as one line (the flag and the fix), like every other error; the usage
    block is one ``--help`` away instead of above the message.  ``--help`` shows every
    flag's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"esolm: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="esolm", description="Train, evaluate and race Eso-LMs against AR, MDLM and BD3-LM.")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in COMMAND_MODULES:
        commands.register(sub)
    return parser


def error_line(err: Exception) -> str:
    """One line for an error: ours say what to fix; the system's (a read-only folder, a folder
    given as a file) name the path and what the system said."""
    if isinstance(err, OSError) and err.errno is not None and err.filename is not None:
        return f"{err.filename}: {err.strerror}; check the path (a file, not a folder, in a folder you can write)"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BrokenPipeError:  # the reader went away (esolm export --csv - | head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except (ValueError, OSError, NotImplementedError) as err:
        print(f"esolm: error: {error_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("esolm: interrupted; finished work is kept (re-run the same command to resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
