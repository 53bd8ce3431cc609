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

import pytest

from msjax.data.preparation import prepare_one
from tests.helpers import (
    EXIT_GRACE_S,
    commands,
    exit_delay,
    load_config,
    make_cityscapes,
    save_random_checkpoint,
)

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
        protocol.evaluate(tmp_path / "run" / "final", "synthetic-target", smoke_data_dir,
                          input_size="128x64", progress=False)  # fmt: skip
        assert live_tf_iterators() <= before
    finally:
        gc.enable()


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, smoke_data_dir):
    """A weights folder, prepared Cityscapes fixtures and raw images for every command."""
    root = tmp_path_factory.mktemp("exit")
    save_random_checkpoint(root / "ckpt", num_classes=19)
    make_cityscapes(root / "raw")
    prepare_one("cityscapes", "1024x512", root / "data", raw_dir=root / "raw", split_lists="none")
    return {"root": root, "smoke_data": smoke_data_dir}


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
