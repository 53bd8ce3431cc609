"""`-h`, `--help` and `--helpfull` of every command: usage and flags on stdout, exit 0.

Each command runs in this process through its `main(argv)`. The config commands (train,
demo, study) parse absl flags, which know no --help of their own without absl's app
runner: they used to stop with "Unknown command line flag 'help'".
"""

import pytest

from msjax import convert, demo, evaluate, predict, prepare, reproduce, study, train
from tests.helpers import CATALOGUE

HELP_FLAGS = ("-h", "--help", "--helpfull")
# command -> (main, takes the program name first, a flag its help must list)
COMMANDS = {
    "train": (train.main, True, "--workdir"),
    "demo": (demo.main, True, "--workdir"),
    "study": (study.main, True, "--report_only"),
    "reproduce": (reproduce.main, False, "--source-weights"),
    "evaluate": (evaluate.main, False, "--checkpoint"),
    "predict": (predict.main, False, "--images"),
    "prepare": (prepare.main, False, "--data-dir"),
    "convert": (convert.main, False, "--num-classes"),
}
CONFIG_COMMANDS = ("train", "demo", "study")


@pytest.mark.parametrize("flag", HELP_FLAGS)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_its_help_and_exits_0(command, flag, capsys):
    main, program_first, listed = COMMANDS[command]
    argv = [f"msjax/{command}.py", flag] if program_first else [flag]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"python -m msjax.{command}" in out and listed in out, out
    assert "--verbose" in out and "error" not in err
    if command in CONFIG_COMMANDS:
        assert CATALOGUE["help of the config commands"] in out
        assert "--config NAME.py[:ARG]" in out and "gta2city.py" in out
    else:
        assert out.startswith(CATALOGUE["help of the other commands"] + command)


def test_help_wins_over_other_flags_and_helpfull_lists_the_fields(capsys):
    argv = ["msjax/train.py", "--config", "gta2city.py:iw", "--config.train.steps=7", "--helpfull"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "method = 'iw'" in out and "train.steps = 7" in out
    # A help flag with a bad override still prints the help, naming the problem.
    assert train.main(["msjax/train.py", "--config", "gta2city.py", "--config.trian=1", "-h"]) == 0
    assert "How --config works" in capsys.readouterr().out
