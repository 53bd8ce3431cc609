"""The demo command (configs/demo.py) shrunk to a smoke run: all four stages and the table."""

import json

from msjax.data.preparation import prepare_one
from tests.test_train import load_config


def test_demo_smoke_prints_the_table(tmp_path, capsys):
    from msjax.demo import run_demo

    c = load_config("demo", "smoke")
    data_dir = str(tmp_path / "data")
    for stream in (c.source, c.target):
        prepare_one(stream.dataset, stream.config, data_dir, max_examples=24)
    c.data_dir = data_dir
    results = run_demo(c, str(tmp_path / "run"))
    assert set(results["target_miou"]) == {"source", "bn_stats_only", "minent", "maxsquare"}
    out = capsys.readouterr().out
    assert "MinEnt" in out and "source only" in out and "vs control" in out
    assert json.load(open(tmp_path / "run" / "results.json")) == results
