"""`python -m tests.kill_during_save STEP TRAIN_ARGS...`: msjax.train, killed inside a save.

Fault injection for tests/test_reliability.py: the run is the real command line, except
that Orbax's final rename of the checkpoint of step STEP (the moment a save becomes
visible) SIGKILLs the process instead. Every file of that checkpoint has been written to
its temporary folder by then, so this is the latest point a crash can hit a save.
"""

import os
import signal
import sys

from orbax.checkpoint._src.path import async_path


def main() -> int:
    step, argv = sys.argv[1], sys.argv[2:]
    rename = async_path.rename

    async def rename_or_die(src, dst):
        if os.path.basename(str(dst)) == step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return await rename(src, dst)

    async_path.rename = rename_or_die
    from msjax import train

    return train.main(["msjax.train", *argv])


if __name__ == "__main__":
    sys.exit(main())
