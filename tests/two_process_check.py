"""`python -m tests.two_process_check`: two JAX processes train like one (run by test_distributed).

The driver starts two local processes that join one job with `jax.distributed.initialize`
on 127.0.0.1 (CPU collectives over Gloo), each with one CPU device, and run the real
trainer on a global batch of 2 pairs: each process reads its own half of every split.
Then the driver trains the same config as a single process (1 device, both pairs) and
compares the final train states (parameters, BN statistics, optimiser state), the logged
losses and the validation mIoU. Both use config.data_shards=2, so the one process reads
both halves and trains on the same global batches. Last, a longer two-process run gets
SIGTERM on process 1 only: both processes must save the same step and exit 0. It prints
one line per check and exits 1 if any fails.

`python -m tests.two_process_check worker PORT ID DATA_DIR WORKDIR` is one of the two.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
TOLERANCE = 1e-6
MOMENTUM_TOLERANCE = 3e-5


def config(data_dir, steps=STEPS):
    from tests.helpers import load_config

    # MaxSquare, not IW MaxSquare: IW's pixel weights are a step function of the argmax, so
    # float32 round-off (one device reduces over both images, two devices all-reduce) can
    # flip one pixel's argmax in a later step and move the gradients far more than
    # round-off, a property of the loss rather than of the distribution (figures:
    # docs/reliability.md). The 8-device check (tests/sharded_step_check.py) compares one
    # IW step.
    c = load_config("gta2city", "maxsquare,smoke")
    c.data_dir = data_dir
    c.batch_pairs = 2
    c.data_shards = 2  # the one-process run reads both shards: the same global batches
    c.train.steps = steps
    c.train.checkpoint_every = 2
    c.train.log_every = 1
    c.train.tensorboard = False
    c.eval.every_steps = 100
    return c


def worker(port: str, process_id: str, data_dir: str, workdir: str, steps: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    from msjax.training.loop import train_and_evaluate

    summary = train_and_evaluate(config(data_dir, int(steps)), workdir)
    with open(os.path.join(workdir, f"data_{process_id}.json"), "w") as f:
        json.dump(summary["data"], f)
    jax.distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(workdir):
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return np.array([[r["loss"], r["loss_target"]] for r in lines if "loss" in r])


def start_workers(data_dir, workdir, steps):
    cmd = [sys.executable, "-m", "tests.two_process_check", "worker", str(free_port())]
    return [
        subprocess.Popen([*cmd, str(i), data_dir, workdir, str(steps)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip


def finish(procs, timeout=400):
    """The workers' outputs once both exit 0; None (after printing them) otherwise."""
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        for i, out in enumerate(outputs):
            print(f"--- process {i} (exit {procs[i].returncode}):\n{out[-4000:]}")
        return None
    return outputs


def preemption_of_one_process(data_dir, workdir) -> bool:
    """SIGTERM to process 1 only: both processes save the same step and exit 0."""
    steps = 60
    procs = start_workers(data_dir, workdir, steps)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 2):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            finish(procs, timeout=5)
            print("preemption: the run did not reach step 2")
            return False
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    outputs = finish(procs, timeout=120)
    if outputs is None:
        return False
    saved = [int(x) for x in re.findall(r"Stopped by SIGTERM: saved step (\d+)", outputs[0])]
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        latest = manager.latest_step()
    print(
        f"preemption: SIGTERM to process 1 only -> both exited 0; process 0 reports saved step "
        f"{saved}, latest checkpoint {latest} (of {steps} steps)"
    )
    return len(saved) == 1 and saved[0] == latest < steps


def driver() -> int:
    from msjax.data.preparation import prepare_one

    root = tempfile.mkdtemp(prefix="msjax_two_process_")
    data_dir = os.path.join(root, "data")
    for dataset in ("synthetic-source", "synthetic-target"):
        prepare_one(dataset, "128x64", data_dir, max_examples=24)
    two, one = os.path.join(root, "two"), os.path.join(root, "one")

    if finish(start_workers(data_dir, two, STEPS)) is None:
        return 1

    from msjax.training.loop import train_and_evaluate
    from msjax.training.run import build_model

    train_and_evaluate(config(data_dir), one)

    ok = True
    shards = [json.load(open(os.path.join(two, f"data_{i}.json"))) for i in range(2)]
    for stream in ("source", "target"):
        splits = [s[stream]["split_this_host"] for s in shards]
        sizes = [s[stream]["examples_this_host"] for s in shards]
        print(f"{stream}: process 0 reads {splits[0]}, process 1 reads {splits[1]}")
        ok &= splits == ["train[0:12]", "train[12:24]"] and sizes == [12, 12]
    one_reads = json.load(open(os.path.join(one, "results.json")))["data"]["source"]
    print(f"one process reads {one_reads['split_this_host']}")

    from tests.helpers import saved_train_state

    b = saved_train_state(one, STEPS)
    a = saved_train_state(two, STEPS, like=b)
    init = build_model(config(data_dir), "cpu")[1]
    # Parameters must agree to TOLERANCE, absolutely and relative to their largest value; BN
    # statistics (running variances reach ~20) relative to theirs. The optimiser state is
    # the momentum, a sum of raw gradients: one device reduces a weight gradient over both
    # images in one convolution, two devices sum per image and all-reduce, so float32
    # round-off differs more there (docs/reliability.md); it gets MOMENTUM_TOLERANCE.
    for part in ("params", "batch_stats", "opt_state"):
        pairs = list(zip(jax.tree.leaves(a[part]), jax.tree.leaves(b[part]), strict=True))
        diff = max(float(np.max(np.abs(x - y))) for x, y in pairs)
        scale = max(float(np.max(np.abs(y))) for _, y in pairs)
        line = f"two processes vs one: {part} max |diff| {diff:.2e}, relative {diff / scale:.1e}"
        if part in init:
            change = max(
                float(np.max(np.abs(y - np.asarray(z))))
                for y, z in zip(jax.tree.leaves(b[part]), jax.tree.leaves(init[part]), strict=True)
            )
            line += f" (largest change over the run {change:.2e})"
        print(line)
        limit = MOMENTUM_TOLERANCE if part == "opt_state" else TOLERANCE
        ok &= diff / scale <= limit and (part != "params" or diff <= TOLERANCE)
    loss_diff = float(np.max(np.abs(losses(two) - losses(one))))
    print(f"two processes vs one: logged losses max |diff| {loss_diff:.2e}")
    ok &= loss_diff <= TOLERANCE
    miou = [json.load(open(os.path.join(w, "results.json")))["last_miou"] for w in (two, one)]
    print(f"two processes vs one: validation mIoU {miou[0]:.6f} vs {miou[1]:.6f}")
    ok &= abs(miou[0] - miou[1]) <= TOLERANCE
    ok &= preemption_of_one_process(data_dir, os.path.join(root, "preempted"))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(*sys.argv[2:])
    else:
        sys.exit(driver())
