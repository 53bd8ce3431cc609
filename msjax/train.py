r"""`python -m msjax.train`: train or adapt DeepLabV2 with the maximum squares loss.

    python -m msjax.train --config configs/gta2city.py:iw --workdir runs/iw \
        --config.data_dir=DATA --config.init.checkpoint=WEIGHTS [--config.batch_pairs=8]

`--config NAME.py` without a folder is looked up in configs/; `--config.FIELD=VALUE` changes
a field of the (locked) config, and a misspelt field is an error. The work itself is
`msjax.training.train_and_evaluate`.

A problem the user can fix (a bad path, field or file; docs/errors.md) prints one
`error: ...` line and exits 2; `--verbose` shows the traceback too. SIGTERM saves a
checkpoint and exits 0, Ctrl-C saves one and exits 130; the same command continues the run.
"""

from __future__ import annotations

import sys

from msjax import cli


def run(config, workdir: str | None, *, verbose=False, allow_config_change=False) -> int:
    """Runs one experiment as the command line does; returns the exit status."""

    def command() -> int:
        from msjax.errors import ConfigError

        cli.check_workdir(workdir)
        if "demo" in config:
            raise ConfigError(
                "this is the demo's config: run it with python -m msjax.demo --workdir DIR."
            )
        cli.start_training_process(config)
        from msjax.training import preemption
        from msjax.training.loop import train_and_evaluate

        summary = train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
        return preemption.EXIT_STATUS.get(summary.get("stop_signal"), 0)

    return cli.run(command, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from msjax.training import preemption

    cli.quiet_tensorflow()
    # Ctrl-C and SIGTERM are recorded from here on, never lost (msjax.training.preemption).
    with preemption.StopSignals() as signals:
        parsed = cli.parse_config_flags(list(sys.argv if argv is None else argv), usage=__doc__)
        if isinstance(parsed, int):
            return parsed
        if signals.received() is not None:
            return cli.stopped_before_start(signals.received())
        flags, config = parsed
        return run(
            config,
            flags.workdir,
            verbose=flags.verbose,
            allow_config_change=flags.allow_config_change,
        )


if __name__ == "__main__":
    sys.exit(main())
