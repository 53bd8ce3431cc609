r"""`python -m msjax.demo`: what does the maximum squares loss add on a domain shift? On a CPU.

    python -m msjax.demo --workdir /tmp/msjax_demo [--config configs/demo.py[:smoke]] \
        [--config.seed=1]

Trainings of a small DeepLabV2 on the procedural synthetic data (msjax.data.synthetic),
each a resumable run in WORKDIR/<method> (`msjax.training.stages`): `source` (labelled
source-style scenes, no target loss), then from its final weights each method of
`config.demo.methods` (msjax.methods): by default `control` (the adaptation schedule with
lambda_target = 0: target images pass through the model, updating the BN running
statistics as in the original, but no target loss acts), `minent` (entropy minimisation,
the paper's baseline) and `maxsquare`. Each is scored on the target domain's validation
split; the table and WORKDIR/results.json hold the mIoUs. Running the command again
continues an interrupted demo.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

from msjax import cli, outputs, ownership


def demo_stages(config, workdir: str) -> list:
    """The demo's stages: the source model, then each method from its final weights."""
    from msjax import methods
    from msjax.training.stages import Stage

    data_dir = config.data_dir or os.path.join(workdir, "data")
    source_weights = os.path.join(workdir, "source", "final")
    stages = []
    for name in ("source", *config.demo.methods):
        method = methods.get(name, "config.demo.methods")
        c = copy.deepcopy(config)
        with c.unlocked():
            del c["demo"]
        c.method = method.name
        c.loss.lambda_target = method.lambda_target(config.loss.lambda_target)
        steps = config.demo.adapt_steps if method.adapting else config.demo.source_steps
        c.init.checkpoint = source_weights if method.adapting else ""
        c.train.steps = c.eval.every_steps = c.optim.iter_max = steps
        c.data_dir = data_dir
        if method.adapting:
            c.optim.lr = config.demo.adapt_lr
        stages.append(Stage(name, method.title, c))
    return stages


def print_table(results: dict, titles: dict) -> None:
    """The demo's table: target mIoU per stage, its gain over source only and the control."""
    rows = results["target_miou"]
    base, control = rows["source"], rows.get("control")
    print(f"\nTarget validation mIoU ({results['eval']}, seed {results['seed']}):")
    print(f"  {'method':<22}{'mIoU':>8}{'vs source':>12}{'vs control':>12}")
    for name, miou in rows.items():
        gain = "" if name == "source" or control is None else f"{100 * (miou - control):+.2f}"
        print(f"  {titles[name]:<22}{100 * miou:>7.1f}%{100 * (miou - base):>+11.1f}{gain:>12}")
    print(f"  wall time {results['wall_time_s'] / 60:.1f} min")


def run_demo(config, workdir: str) -> dict:
    """Runs the stages in WORKDIR/<stage name>; prints the table, writes results.json.

    Returns the results, or {'stop_signal': ...} if a signal stopped a stage.
    """
    import jax

    from msjax.training.stages import run_stages

    workdir = os.path.abspath(os.path.expanduser(workdir))
    start = time.perf_counter()
    stages = demo_stages(config, workdir)
    summaries = run_stages(stages, workdir)
    stopped = [s["stop_signal"] for s in summaries.values() if "stop_signal" in s]
    if stopped:
        return {"stop_signal": stopped[0]}
    results = {
        "target_miou": {name: s["last_miou"] for name, s in summaries.items()},
        "seed": config.seed,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "eval": f"{config.eval.dataset}/{config.eval.size}/{config.eval.split}",
    }
    if jax.process_index() == 0:
        print_table(results, {stage.name: stage.title for stage in stages})
        outputs.write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from msjax.training import preemption

    cli.quiet_tensorflow()
    argv = list(sys.argv if argv is None else argv)
    # Ctrl-C and SIGTERM are recorded from here on, never lost (msjax.training.preemption).
    with preemption.StopSignals() as signals:
        parsed = cli.parse_config_flags(argv, default_config="demo.py", usage=__doc__)
        if isinstance(parsed, int):
            return parsed
        if signals.received() is not None:
            return cli.stopped_before_start(signals.received())
        flags, config = parsed

        def command() -> int:
            from msjax import config_checks
            from msjax.errors import ConfigError

            cli.check_workdir(flags.workdir)
            if "demo" not in config:
                raise ConfigError("--config: msjax.demo needs a demo config (configs/demo.py).")
            with cli.quiet_native_stderr():  # TensorFlow's C++ banners at import
                from msjax.data import builders  # noqa: F401
            config_checks.check_demo(config.demo)
            cli.start_training_process(config)
            with ownership.use_folder(flags.workdir, "msjax.demo", what="--workdir",
                                      clashes=("results.json",), collective=True):  # fmt: skip
                results = run_demo(config, flags.workdir)
            return preemption.EXIT_STATUS.get(results.get("stop_signal"), 0)

        return cli.run(command, verbose=flags.verbose)


if __name__ == "__main__":
    sys.exit(main())
