"""Every command closes what it opened and exits when its work is done.

A tf.data iterator left for interpreter shutdown can block the exit for minutes (its
destructor joins the pipeline's thread pool while the interpreter is being torn down): a
scheduler job that never ends. Two checks:
- by construction: after a training run and an evaluation return in this process, no
  tf.data iterator they created is still alive (they were closed explicitly, not left to
  the garbage collector or to shutdown);
- as a user sees it: each command, run as a real process several times, exits within a few
  seconds of its last output line (the hang seen once in seven runs; scripts/exit_check.py
  repeats this many more times).
"""

import gc
import subprocess
import sys
import threading
import time

import pytest

from msjax.data.preparation import prepare_one
from tests import fake_data
from tests.checkpoints import save_random_checkpoint
from tests.test_train import REPO, load_config

# Seconds a command may take between its last line of output and its exit. A normal exit
# (TensorFlow, JAX and Orbax unloading) takes a few seconds even on a loaded 2-core machine;
# the hang this guards against lasted minutes.
EXIT_GRACE_S = 30
REPEATS = 3


def live_tf_iterators() -> int:
    """tf.data iterators alive in this process, without running the garbage collector.

    An iterator that only the collector (or interpreter shutdown) would free is one that was
    not closed: it counts.
    """
    from tensorflow.python.data.ops.iterator_ops import OwnedIterator

    return sum(isinstance(o, OwnedIterator) for o in gc.get_objects())


def test_training_and_evaluation_leave_no_tf_data_iterator_alive(smoke_data_dir, tmp_path):
    from msjax.evaluation import protocol
    from msjax.training.loop import train_and_evaluate

    gc.collect()
    gc.disable()  # what is not closed explicitly stays alive until a collection
    try:
        before = live_tf_iterators()
        c = load_config("gta2city", "iw,smoke")
        c.data_dir = smoke_data_dir
        c.train.tensorboard = False
        summary = train_and_evaluate(c, str(tmp_path / "run"))
        assert summary["final_step"] == 2
        assert live_tf_iterators() <= before
        protocol.evaluate(tmp_path / "run" / "final", "synthetic", smoke_data_dir,
                          input_size="128x64", progress=False)  # fmt: skip
        assert live_tf_iterators() <= before
    finally:
        gc.enable()


def exit_delay(args: list[str], timeout: float = 600, tail: int = 5) -> tuple[int, float, str]:
    """Runs `python -m ARGS`; returns (status, seconds from its last output to its exit, and
    the last `tail` lines of its output).

    Both output streams are read line by line as they come, so the time of the last line is
    known to within the reader's latency.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    last = [time.monotonic()]
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            last[0] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{' '.join(args)} did not exit within {timeout} s:\n" + "".join(lines[-20:]))
    ended = time.monotonic()
    reader.join(timeout=10)
    return proc.returncode, ended - last[0], "".join(lines[-tail:])


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, smoke_data_dir):
    """A weights folder, prepared Cityscapes fixtures and raw images for every command."""
    root = tmp_path_factory.mktemp("exit")
    save_random_checkpoint(root / "ckpt", num_classes=19)
    fake_data.make_cityscapes(root / "raw")
    prepare_one("cityscapes", "1024x512", root / "data", raw_dir=root / "raw", split_lists="none")
    return {"root": root, "smoke_data": smoke_data_dir}


def commands(inputs, i: int) -> dict[str, list[str]]:
    """Each command's arguments for repetition `i` (fresh output folders every time)."""
    root = inputs["root"]
    return {
        "train": ["msjax.train", "--config", "gta2city.py:iw,smoke", f"--workdir={root}/run{i}",
                  f"--config.data_dir={inputs['smoke_data']}", "--config.train.tensorboard=False"],
        "evaluate": ["msjax.evaluate", "--checkpoint", str(root / "ckpt"), "--dataset",
                     "cityscapes", "--data-dir", str(root / "data"), "--out",
                     str(root / f"eval{i}"), "--no-progress"],
        "predict": ["msjax.predict", "--checkpoint", str(root / "ckpt"), "--images",
                    str(root / "raw" / "leftImg8bit" / "val"), "--out", str(root / f"pred{i}"),
                    "--input-size", "64", "--no-progress"],
        "prepare": ["msjax.prepare", "cityscapes", str(root / "raw"), "--data-dir",
                    str(root / f"data{i}"), "--split-lists", "none", "--no-progress"],
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "prepare"])
def test_each_command_exits_soon_after_its_last_output(cli_inputs, command):
    delays = []
    for i in range(REPEATS):
        status, delay, tail = exit_delay(commands(cli_inputs, i)[command])
        assert status == 0, tail
        delays.append(round(delay, 1))
    print(f"{command}: seconds from last output to exit {delays}")
    assert max(delays) <= EXIT_GRACE_S, delays
