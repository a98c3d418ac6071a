"""The README's "Your own network" example runs as written."""

import os
import re

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_your_own_network_example_runs(capsys):
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = readme.split("## Your own network", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["exit_1", "exit_2", "final"]
    assert [line.split()[1] for line in printed[:2]] == ["block3b_add", "block5c_add"]
    x = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)
    assert scope["exit_1"].predict(x, verbose=0).shape == (2, 10)
    result = scope["cascade"](x, threshold=0.0)
    assert (result.exits == 1).all() and scope["trainer"].optimizer is not None
