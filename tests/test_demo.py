"""The demo command (configs/demo.py) shrunk to a smoke run: all four stages and the table."""

import json

from msjax.data.preparation import prepare_one
from tests.test_train import load_config


def test_demo_smoke_prints_the_table(tmp_path, capsys):
    from msjax.demo import run_demo

    data_dir = str(tmp_path / "data")
    for dataset in ("synthetic_source", "synthetic_target"):
        prepare_one(dataset, "192x96", data_dir, max_examples=24)
    c = load_config("demo", "smoke")
    c.data_dir = data_dir
    results = run_demo(c, str(tmp_path / "run"))
    assert set(results["target_miou"]) == {"source", "bn_stats_only", "maxsquare", "iw_maxsquare"}
    out = capsys.readouterr().out
    assert "MaxSquare + IW" in out and "source only" in out
    assert json.load(open(tmp_path / "run" / "results.json")) == results
