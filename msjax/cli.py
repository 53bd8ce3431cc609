"""What every `python -m msjax.COMMAND` shares: process set-up and how errors end a command.

- A `msjax.errors.UserError` (a bad path, field, argument or file) prints one
  `error: ...` line on stderr and gives exit status 2; `--verbose` prints its traceback
  first. Anything else is a bug in msjax and propagates with its full traceback.
- Ctrl-C outside a training loop (which handles it itself, see
  `msjax.training.preemption`) prints one line and gives 130, the shell's convention.
- SIGTERM to a command that does not train (which would kill it at once) stops it the
  same way with status 143, so that its temporary outputs and its folder lock are cleaned
  up; a training command saves and stops instead (`msjax.training.preemption`).
- Without --verbose, the noise libraries print after a failure that msjax reports itself
  is dropped: Orbax's ERROR logs of a failed save (its exception reaches msjax) and the
  "Event loop is closed" errors its leftover I/O callbacks raise.
- TensorFlow (only the data pipeline uses it) is told to stay quiet and, when it is
  imported, to leave every GPU to JAX.
- `-h`, `--help` and `--helpfull` print every command's usage and flags, exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from msjax.errors import ConfigError, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM
HELP_FLAGS = ("-h", "--help", "--helpfull")


def quiet_tensorflow() -> None:
    """Asks TensorFlow for no info/warning logs (it reads this once, at import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def quiet_native_stderr(into=None):
    """Silences C++ log lines a library prints at import (TF_CPP_MIN_LOG_LEVEL cannot).

    Only what runs inside is silenced; Python exceptions still surface afterwards.

    Args:
      into: a binary file that receives what was written instead (None: discard it).
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # pytest capture, notebooks: nothing to do
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    target = os.open(os.devnull, os.O_WRONLY) if into is None else os.dup(into.fileno())
    try:
        os.dup2(target, fd)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(target)


class Terminated(BaseException):
    """SIGTERM received by a command that does not train (like KeyboardInterrupt)."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_stops_the_command():
    """SIGTERM raises Terminated in the block, unless a handler (a trainer's) is installed."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(command: Callable[[], int | None], *, verbose: bool = False) -> int:
    """Runs one command; returns its exit status.

    Every `python -m msjax.COMMAND` runs all its work, argument parsing included, through
    here, so a UserError anywhere ends it with one line and status 2.

    Args:
      command: the command's work; returns its exit status (None means 0).
      verbose: also print the traceback of a UserError (and the libraries' noise).

    Returns:
      The command's status, 2 for a UserError, 130 for Ctrl-C, 143 for SIGTERM.
    """
    if not verbose:
        quiet_library_noise()
    discarded = "Outputs being written were discarded; earlier ones are intact."
    try:
        with _sigterm_stops_the_command():
            status = command()
    except UserError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"Interrupted (Ctrl-C). {discarded}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"Terminated (SIGTERM). {discarded}", file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    except SystemExit as e:  # argparse after --help (0) or a usage error (2)
        status = e.code
    return 0 if status is None else int(status)


class _OrbaxErrors(logging.Filter):
    """Drops Orbax's ERROR records: the failure they log reaches msjax as an exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
        return not (orbax and record.levelno >= logging.ERROR)


def _without_closed_loop_errors(previous):
    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return  # an I/O callback of an Orbax save that had already failed
        previous(unraisable)

    hook.msjax_quiet = True
    return hook


def quiet_library_noise() -> None:
    """Installs the two filters of the module doc (once per process)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxErrors) for f in logger.filters):
        logger.addFilter(_OrbaxErrors())
    if not getattr(sys.unraisablehook, "msjax_quiet", False):
        sys.unraisablehook = _without_closed_loop_errors(sys.unraisablehook)


def start_jax() -> None:
    """Starts JAX's backend now: a platform this machine lacks is one ConfigError.

    Call it before the first JAX computation (after `jax.distributed.initialize`, which
    must come first). JAX_PLATFORMS names the platforms to use; with it set to one this
    machine does not have, JAX raises a RuntimeError (or, for 'cuda' without a GPU, an
    AssertionError) from deep inside whatever first touches a device.
    """
    import tempfile

    import jax

    platforms = jax.config.jax_platforms
    # What the platform's own library prints while it starts (libtpu's C++ log lines) is
    # held back: shown unless the start fails for JAX_PLATFORMS, which one line explains.
    with tempfile.TemporaryFile() as held:
        try:
            with quiet_native_stderr(into=held):
                jax.devices()
        except (RuntimeError, AssertionError) as e:
            if platforms:
                raise ConfigError(_platform_message(platforms, e)) from None
            _replay(held)
            raise  # JAX chose the platforms itself: not the user's setting
        _replay(held)


def _platform_message(platforms: str, error: BaseException) -> str:
    reason = str(error).partition("': ")[2] or "no device of that platform is visible"
    reason = reason.partition(" (set JAX_PLATFORMS=")[0].strip().rstrip(".")
    return (
        f"JAX_PLATFORMS={platforms}: JAX cannot start that platform on this machine "
        f"({reason}). Set JAX_PLATFORMS to a platform it has (e.g. cpu), or unset it to let "
        "JAX choose; NVIDIA GPUs also need the cuda12 extra (pip install -e '.[cuda12]')."
    )


def _replay(held) -> None:
    held.seek(0)
    text = held.read().decode(errors="replace")
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()


def stopped_before_start(signum: int) -> int:
    """Reports a stop signal received before a training command started; its exit status."""
    from msjax.training import preemption

    print(f"Stopped by {preemption.SIGNAL_TEXT[signum]} before the run started; nothing was "
          "written.", file=sys.stderr, flush=True)  # fmt: skip
    return preemption.EXIT_STATUS[signum]


def argument_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The argparse parser of a command: its docstring as the help text, --helpfull too."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=doc.strip().replace("`", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--helpfull", action="help", help="the same as --help")
    return parser


def wants_help(argv) -> str | None:
    """The help flag of a command line ('--help', '--helpfull', ...), or None."""
    for arg in argv or []:
        if arg == "--":
            return None
        if arg in HELP_FLAGS:
            return arg
    return None


def check_workdir(workdir) -> None:
    """Raises ConfigError unless --workdir names a folder (an empty string would be '.')."""
    if workdir is None or not str(workdir).strip():
        raise ConfigError("--workdir is required: the folder of the run.")


def wants_verbose(argv) -> bool:
    """Whether a command line asks for tracebacks (before its parser has run)."""
    return "--verbose" in (argv or [])


# --------------------------------------------------------------------------------------
# Commands that take an experiment config (`msjax.train`, `msjax.demo`): absl flags with
# ml_collections' `--config FILE[:ARG]` and `--config.FIELD=VALUE` overrides.

_CONFIG_FLAGS = None


def _config_flags():
    """Defines (once per process) and returns the absl flags of the config commands."""
    global _CONFIG_FLAGS
    if _CONFIG_FLAGS is None:
        from absl import flags
        from ml_collections import config_flags

        config = config_flags.DEFINE_config_file(
            "config", None, "Experiment config file (configs/NAME.py[:ARG]).", lock_config=True
        )
        flags.DEFINE_string("workdir", None, "Folder of the run (created; resumed if it exists).")
        flags.DEFINE_bool("verbose", False, "Show tracebacks of user-facing errors.")
        flags.DEFINE_bool(
            "allow_config_change",
            False,
            "Continue the run in --workdir although it was started with a config that differs "
            "in a field that changes the computation (refused otherwise).",
        )
        _CONFIG_FLAGS = (flags.FLAGS, config)
    return _CONFIG_FLAGS


def resolve_config_path(argv: list[str]) -> list[str]:
    """Lets `--config gta2city.py[:arg]` name a file in configs/ when no such path exists."""
    from msjax.configlib import CONFIGS_DIR

    out = []
    for i, arg in enumerate(argv):
        value, prefix = None, None
        if arg.startswith("--config="):
            prefix, value = "--config=", arg[len("--config=") :]
        elif i > 0 and argv[i - 1] == "--config":
            prefix, value = "", arg
        if value is not None:
            path, sep, rest = value.partition(":")
            if not os.path.exists(path) and os.path.exists(os.path.join(CONFIGS_DIR, path)):
                value = os.path.join(CONFIGS_DIR, path) + sep + rest
            arg = prefix + value
        out.append(arg)
    return out


def config_files() -> list[str]:
    """The config files of configs/, by name."""
    from msjax.configlib import CONFIGS_DIR

    return sorted(f for f in os.listdir(CONFIGS_DIR) if f.endswith(".py"))


def config_file_problem(argv: list[str]) -> str | None:
    """What is wrong with the --config FILE of a command line (None if it is a file).

    ml_collections would report a missing file only when the config is first used, with
    its traceback.
    """
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg[len("--config=") :]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        path = value.partition(":")[0]
        if os.path.isfile(path):
            return None
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        return f"--config {value}: {path} {what}; give a config file, e.g. one of {config_files()}."
    return None


def _without_traceback(message: str, verbose: bool) -> str:
    """ml_collections puts a config file's traceback into its flag error: keep its last line."""
    head, sep, trace = message.partition("Traceback (most recent call last):")
    if not sep or verbose:
        return message
    last = [line for line in trace.strip().splitlines() if line.strip()][-1]
    return f"{head.strip()} {last.partition(': ')[2] or last}"


@contextlib.contextmanager
def _as_sys_argv(argv: list[str]):
    """Makes `argv` sys.argv while inside: ml_collections finds the --config.FIELD overrides
    in sys.argv, so `main(argv)` called in a process of other arguments (a test) parses them."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _forget_earlier_parse(FLAGS) -> None:
    """Back to the flags as defined, for a second command in one process (a test): the
    defaults again, and none of the --config.FIELD flags ml_collections added for the last."""
    for name in [name for name in FLAGS if name.startswith("config.")]:
        delattr(FLAGS, name)
    FLAGS.unparse_flags()


CONFIG_HELP = """\
How --config works:
  --config NAME.py[:ARG]   the experiment: a config file, or one of configs/ by name;
                           ARG picks a variant, e.g. gta2city.py:iw, and any config takes
                           ',smoke' (gta2city.py:iw,smoke: tiny, on a CPU).
                           In configs/: {configs}.
  --config.FIELD=VALUE     changes one field of that config, e.g. --config.train.steps=10
                           --config.data_dir=$HOME/msjax_data --config.model.dtype=bfloat16
                           --config.target.crop_size='(640,320)'; nested fields are joined
                           with dots. A misspelt field is an error that names the closest
                           one. --helpfull with --config lists every field and its value.
"""


def config_help(argv: list[str], usage: str, flag_names, full: bool) -> str:
    """The help text of a config command: usage, its flags, --config, and (full) the fields."""
    from absl import flags

    FLAGS, config = _config_flags()
    lines = [usage.strip().replace("`", ""), "", "Flags:"]
    for name in flag_names:
        flag = FLAGS[name]
        default = "" if flag.default in (None, False) else f" (default: {flag.default})"
        lines += _wrap(f"  --{name}: {flag.help}{default}", " " * 6)
    lines.append("  -h, --help, --helpfull: this help (--helpfull also lists the config's fields).")
    configs = ", ".join(config_files())
    lines.append("")
    for line in CONFIG_HELP.format(configs=configs).rstrip().splitlines():
        lines += _wrap(line, " " * 27)
    given = any(a == "--config" or a.startswith("--config=") for a in argv)
    if full and given and not config_file_problem(argv):
        rest = [a for a in argv if a not in HELP_FLAGS]
        try:
            with _as_sys_argv(rest):
                _forget_earlier_parse(FLAGS)
                FLAGS(rest)
            fields = _flat_fields(config.value.to_dict())
        except (flags.Error, UserError, AttributeError, KeyError, TypeError, ValueError) as e:
            # A bad override: the help still prints, and names the problem.
            lines += ["", f"(the fields of --config could not be listed: {e})"]
        else:
            lines += ["", "Fields of this --config (override any with --config.FIELD=VALUE):"]
            lines += [f"  {name} = {value!r}" for name, value in fields]
    return "\n".join(lines) + "\n"


def _wrap(line: str, indent: str, width: int = 92) -> list[str]:
    """A help line wrapped at `width`, its continuation lines indented by `indent`."""
    import textwrap

    return textwrap.wrap(line, width, subsequent_indent=indent) or [""]


def _flat_fields(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flat_fields(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


BASE_FLAGS = ("config", "workdir", "allow_config_change", "verbose")


def parse_config_flags(
    argv: list[str], default_config: str | None = None, usage: str = "", extra_flags=()
):
    """Parses a config command's flags: (absl FLAGS, config), or an exit status (int).

    Args:
      argv: the command line, program name first.
      default_config: the --config to use when none is given (e.g. 'demo.py').
      usage: the command's help text (its module docstring), for --help.
      extra_flags: names of the command's own absl flags, for --help.
    """
    from absl import flags
    from absl import logging as absl_logging

    FLAGS, config = _config_flags()
    command_line = list(argv)
    if default_config and not any(a == "--config" or a.startswith("--config=") for a in argv):
        # First, because overrides (--config.FIELD=VALUE) are only known after --config.
        argv = [argv[0], f"--config={default_config}", *argv[1:]]
    argv = resolve_config_path(list(argv))
    verbose = wants_verbose(argv)
    asked = wants_help(argv[1:])
    if asked:
        full = asked == "--helpfull"
        print(config_help(argv, usage, (*BASE_FLAGS, *extra_flags), full), end="")
        return 0
    problem = config_file_problem(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        with _as_sys_argv(command_line):
            _forget_earlier_parse(FLAGS)
            FLAGS(argv)
        value = config.value
    except flags.Error as e:
        print(f"error: {_without_traceback(str(e), verbose)}", file=sys.stderr)
        print("Pass --help to list the flags.", file=sys.stderr)
        return EXIT_USER_ERROR
    except UserError as e:  # raised by a config file's get_config (a bad ':ARG')
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for a misspelt or mistyped --config.FIELD override.
        if verbose:
            raise
        inner = e.args[0] if e.args else e
        inner = inner.args[0] if isinstance(inner, KeyError) and inner.args else inner
        print(f"error: bad --config override or config file: {inner}", file=sys.stderr)
        return EXIT_USER_ERROR
    if value is None:
        print(f"error: --config is required: the experiment, e.g. --config gta2city.py:iw "
              f"(configs/: {config_files()}). Pass --help for more.", file=sys.stderr)  # fmt: skip
        return EXIT_USER_ERROR
    # Orbax logs every save step at INFO; the progress bar and metrics.jsonl say enough.
    absl_logging.set_verbosity(absl_logging.INFO if FLAGS.verbose else absl_logging.WARNING)
    return FLAGS, value


DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"


def start_training_process(config) -> None:
    """Process-wide set-up of a training command, before JAX starts its backend.

    Applies `config.deterministic` (XLA's deterministic GPU kernels, an XLA_FLAGS setting),
    hides the GPUs from TensorFlow, joins a multi-host job when `config.distributed`, then
    starts JAX's backend (`start_jax`).
    """
    from msjax import xla

    if config.deterministic:
        try:
            xla.add_xla_flags(DETERMINISTIC_GPU_FLAG)
        except xla.BackendStartedError:
            raise ConfigError(
                "config.deterministic=True, but JAX has already started its backend, so XLA "
                f"would ignore the flag: set XLA_FLAGS={DETERMINISTIC_GPU_FLAG} before "
                "starting Python instead."
            ) from None
        print(f"Deterministic GPU kernels requested (XLA_FLAGS={os.environ['XLA_FLAGS']}).")
    from msjax.data import hide_gpus_from_tensorflow

    with quiet_native_stderr():  # TensorFlow's C++ banners would bury an error message
        hide_gpus_from_tensorflow()
    if config.distributed:
        import jax

        try:
            jax.distributed.initialize()
        except ValueError as e:  # raised by this call only when there is no job to join
            raise ConfigError(
                f"config.distributed=True, but JAX found no multi-host job to join ({e}). "
                "Start the processes with a launcher JAX detects (SLURM, Open MPI, "
                "Kubernetes, Cloud TPU), or leave config.distributed=False on one machine."
            ) from None
    start_jax()
