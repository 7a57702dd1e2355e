"""Shared CLI objects: the Typer app, consoles, and one-line error handling.

Every usage error, whichever command and whoever parses it (Typer for unknown options,
missing arguments, bad choices and numbers; the commands themselves for everything
else), prints exactly one line ``error: <message>`` on stderr and exits with 2.
"""

from __future__ import annotations

import importlib
import sys
import time
import typing
from typing import Any, Callable, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ..runs.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, RunError, RunEvents, bf16_emulation_warning  # noqa: F401  (re-exported)
from ..runs.common import interruptible as sigterm_as_interrupt  # noqa: F401  (train, prepare, distill use it)
from ..runs.common import parse_windows as _parse_windows
from ..util.display import printable

# Results go to stdout; progress, warnings and errors to stderr so pipes stay clean.
console = Console(stderr=True)

_T = TypeVar("_T")


def _exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, other click errors, aborts) of the click Typer runs on: its own copy
    (typer >= 0.22 vendors click as ``typer._click``) and/or the ``click`` package."""
    usage: list[type] = []
    other: list[type] = []
    abort: list[type] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(module.UsageError)
        other.append(module.ClickException)
        if hasattr(module, "Abort"):
            abort.append(module.Abort)
    return tuple(usage), tuple(other), tuple(abort)


_USAGE_ERRORS, _CLICK_ERRORS, _ABORTS = _exception_types()


def one_line(message: object) -> str:
    """``message`` safe to print as one line on a terminal: control characters (a newline,
    an escape sequence in a file name) shown as ``\\xNN``, rich markup taken literally."""
    return escape(printable(message))


def _command_path(ctx: Any) -> str:
    names: list[str] = []
    while ctx is not None and getattr(ctx, "parent", None) is not None:
        names.append(str(ctx.info_name))
        ctx = ctx.parent
    return " ".join(["mttag", *reversed(names)])


def _print_usage_error(exc: Exception, command: str | None) -> int:
    if type(exc).__name__ == "NoArgsIsHelpError":
        # `mttag` alone: the help is the message (Typer with rich has printed it already)
        text = exc.format_message()
        if text.strip():
            typer.echo(text, err=True)
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    path = _command_path(getattr(exc, "ctx", None))
    if path == "mttag" and command:  # some errors in a command's options carry the root's context
        path = f"mttag {command}"
    hint = f"; see '{path} --help'"
    console.print(f"[bold red]error:[/] {one_line(message)}{hint}", highlight=False, soft_wrap=True)
    return EXIT_USAGE


def tidy_placeholders(command: Any, ctx: Any) -> None:
    """Value placeholders in ``--help`` that say what to type. Recent Typer shows each
    parameter's Python type: ``<bool>`` after a flag, which takes no value, and
    ``<list[Path]>`` after a repeatable option or a variadic argument, which take one
    path per occurrence. Flags get no placeholder, lists their element's (``<path>``);
    an option's own ``metavar`` is kept. Older Typer (click's TEXT, PATH) is left alone."""
    for param in [*command.params, command.get_help_option(ctx)]:
        _tidy_placeholder(param)


def _tidy_placeholder(param: Any) -> None:
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return
    if getattr(param, "is_flag", False):
        if param.metavar is None:
            param.metavar = ""
    elif desc.is_list and not desc.is_choice:
        (element,) = typing.get_args(desc.annotation) or (str,)
        shown = f"<{param._bare_type(element).lower()}>"
        if param.param_type_name == "option":
            if param.metavar is None:
                param.metavar = shown
        else:  # an argument's metavar is its name; its type column comes from display_type
            param.display_type = lambda ctx, shown=shown: shown


class OneLineErrorGroup(TyperGroup):
    """The root command: Typer's parsing, but errors as one ``error:`` line instead of a
    usage block and a box. Hooked into ``main`` so ``mttag`` and ``CliRunner().invoke(app)``
    behave the same; ``typer.Exit(code)``, ``--help``, ``--version`` and Ctrl+C (130) keep
    their exit codes."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            tidy_placeholders(command, ctx)
        return command

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)  # `mttag --help` itself: --help and --version
        for param in [*self.params, option]:
            _tidy_placeholder(param)
        return option

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # not standalone: Typer returns the code of a typer.Exit (and 130 for Ctrl+C)
            # and lets click's errors through, to be printed here
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _USAGE_ERRORS as exc:
            words = sys.argv[1:] if args is None else list(args)
            code = _print_usage_error(exc, next((w for w in words if w in self.commands), None))
        except _CLICK_ERRORS as exc:
            console.print(f"[bold red]error:[/] {one_line(exc.format_message())}", highlight=False, soft_wrap=True)
            code = int(getattr(exc, "exit_code", EXIT_SOME_FAILED))
        except _ABORTS:
            console.print("[yellow]aborted[/]", highlight=False)
            code = EXIT_SOME_FAILED
        else:
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else EXIT_OK
        sys.exit(code)


app = typer.Typer(
    cls=OneLineErrorGroup,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,  # never dump tensors or tokens into a bug report
)


def fail(message: object, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` on one line and exit."""
    console.print(f"[bold red]error:[/] {one_line(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    """A usage error found by the command itself, printed like Typer's own:
    ``error: <message>; see 'mttag <command> --help'``, exit 2."""
    raise _USAGE_ERRORS[0](message)


def warn(message: object, target: Console | None = None) -> None:
    """Print ``warning: message`` on one line on stderr."""
    (target or console).print(f"[yellow]warning:[/] {one_line(message)}", highlight=False, soft_wrap=True)


def warn_if_bf16_is_emulated(precision: str, device_type: str, quiet: bool) -> None:
    """``--precision bf16`` on a CPU without native bf16 works, but PyTorch emulates it,
    more slowly than float32: say so (``tag``, ``train`` and ``distill`` alike)."""
    message = None if quiet else bf16_emulation_warning(precision, device_type)
    if message:
        warn(message)


def ran_on(device_type: str, precision: str) -> str:
    """Where a run's model ran, for its summary: ``cpu`` or ``cpu (bf16)``. bf16 is named
    because ``--precision auto`` picks it on some CPUs and not others, and the numbers
    differ slightly."""
    return f"{device_type} (bf16)" if precision == "bf16" else device_type


def run(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, a run of mttag.runs; its RunError printed as one ``error:`` line and exited with."""
    try:
        return fn(*args)
    except RunError as exc:
        fail(exc.message, exc.exit_code)


class ConsoleEvents(RunEvents):
    """A run's warnings on stderr, one ``warning:`` line each (none with --quiet)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def warning(self, path: str | None, message: str) -> None:
        if not self.quiet:
            warn(message if path is None else f"{path}: {message}")


class ProgressEvents(ConsoleEvents):
    """A run's events on the terminal: its warnings and a transient progress bar (only on a
    terminal, not with --quiet). Commands add what they print per result."""

    def __init__(self, description: str, quiet: bool, bar_console: Console | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        super().__init__(quiet)
        self.description = description
        bar_console = bar_console or console
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            console=bar_console, disable=quiet or not bar_console.is_terminal, transient=True,
        )
        self.task = None
        self.count = 0

    def started(self, total: int) -> None:
        self.start = time.perf_counter()
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=total, rate="")

    def result(self, result: Any) -> None:
        self.count += 1
        if self.task is not None:
            rate = self.count / max(time.perf_counter() - self.start, 1e-9)
            self.progress.update(self.task, advance=1, rate=f"{rate:.2f} tracks/s")

    def finished(self) -> None:
        self.progress.stop()


def augment_probabilities(items: list[str] | None) -> dict[str, float]:
    """``--augment-p NAME=P`` options → ``{name: p}`` for ``paper_chain``, with one-line errors."""
    from ..training.augment import DEFAULT_PROBABILITIES

    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in DEFAULT_PROBABILITIES:
            fail(f"--augment-p {item!r}: expected NAME=P with NAME one of {', '.join(DEFAULT_PROBABILITIES)}")
        try:
            p = float(value)
        except ValueError:
            p = -1.0
        if not 0.0 <= p <= 1.0:
            fail(f"--augment-p {item!r}: the probability must be a number from 0 to 1")
        out[name] = p
    return out


def model_param_overrides(items: list[str] | None, arch: str, base: dict[str, Any] | None = None,
                          preset: str = "teacher") -> dict[str, Any]:
    """``--param KEY=VALUE`` options → ``{key: value}`` overriding an architecture's preset (or
    ``base``, a config file's ``params``), checked against its parameter class with one-line
    errors. VALUE is read as JSON where it is JSON (``64``, ``0.2``, ``true``, ``[0.4,0.7]``)."""
    import json

    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            fail(f"--param {item!r}: expected KEY=VALUE, e.g. --param depth=6")
        try:
            out[name] = json.loads(value)
        except ValueError:
            try:
                out[name] = float(value)  # what JSON refuses but people write: .2, 5.
            except ValueError:
                out[name] = value.strip()
        if isinstance(out[name], list):
            out[name] = tuple(out[name])
    if not out:
        return out
    from ..models import make_config, params_class

    try:
        if base is not None:
            params_class(arch).from_dict({**base, **out})
        else:
            make_config(arch, ["tag"], preset, **out).validate()
    except (TypeError, ValueError) as exc:
        fail(f"--param: {exc}")
    return out


def parse_windows(value: str | None, option: str = "--windows") -> int | None:
    """``--windows N|all`` → N, or None for every window (also when not given)."""
    return run(_parse_windows, value, option)
