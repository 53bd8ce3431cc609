"""Training: the step, the loop and everything a resumable, sharded run needs.

- `step`: the train state and the jitted adaptation step (two forward passes, one update);
- `optim`: the original's SGD, poly schedule and parameter groups as config rules;
- `run`: building a run once from its config (model, optimiser, state, streams, ...);
- `loop`: `train_and_evaluate(config, workdir)`, the loop that reads top to bottom;
- `checkpoints`, `workdir`, `writer`, `validation`, `preemption`: the loop's helpers;
- `stages`: chains of runs (source model, then adaptations), for the demo and reproduce.
"""
