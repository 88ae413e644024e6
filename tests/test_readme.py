"""The README stays true: its block table lists the registry, its test command is what CI runs,
and its usage example runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from attnzoo import list_attn

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", README, flags=re.S)
    assert m, f"README lost its {name} markers"
    return m.group(1)


def test_readme_block_table_lists_exactly_the_registered_blocks():
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", _section("zoo-table"), flags=re.M)
    assert names == list_attn(), "regenerate it: python benchmarks/readme.py"


def test_readme_has_exactly_two_fenced_bash_commands_for_a_fresh_machine():
    quick = README.split("## Two commands for a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "attnzoo fit --config configs/fit/fmnist_resnet20.yaml" in commands[0]
    assert (ROOT / "configs/fit/fmnist_resnet20.yaml").is_file()


def test_ci_runs_the_readme_test_command():
    quick = README.split("## Two commands for a fresh machine", 1)[1].split("\n## ", 1)[0]
    test_command = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)[1]
    ci = (ROOT / ".ci" / "run").read_text()
    # CI spells pip and pytest through python3 -m; the arguments must be the README's
    normalise = lambda c: re.sub(r"\b(python3? -m )?(pip|pytest)\b", r"\2", c).replace(" -q -c", " -c")  # noqa: E731
    assert normalise(test_command) in normalise(ci.replace(" -q -c", " -c"))


def test_readme_usage_example_runs():
    pytest.importorskip("torchvision")
    usage = README.split("## Usage", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)\n```", usage, flags=re.S)[0]
    code = code.replace("torch.randn(8, 64, 32, 32)", "torch.randn(2, 64, 8, 8)")  # keep the test small
    namespace: dict = {}
    exec(compile(code, "README usage", "exec"), namespace)
    assert namespace["y"].shape == (2, 64, 8, 8)
    assert len(namespace["report"].sites) == 4  # resnet18, standard, stages 3 and 4: 2 blocks each


def test_readme_explain_example_runs():
    section = README.split("## See what the blocks attend to", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)[0]
    import torch

    from attnzoo import create_backbone

    model = create_backbone("resnet20", num_classes=10, in_chans=1, attn="cbam").eval()
    namespace: dict = {"model": model, "images": torch.randn(2, 1, 28, 28)}
    exec(compile(code, "README explain", "exec"), namespace)
    assert namespace["cam"].shape == (2, 1, 28, 28)
    assert namespace["maps"]  # one map per attention site


def test_ci_builds_a_fresh_virtual_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m venv" in ci and "/bin/activate" in ci


def test_the_suite_refuses_connections_to_other_machines(no_downloads):
    """The autouse guard in tests/conftest.py is live: what any test does runs under it."""
    import socket

    seen = len(no_downloads)
    with pytest.raises(OSError, match="nothing in attnzoo downloads"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: never routed
    with pytest.raises(OSError, match="nothing in attnzoo downloads"):
        socket.getaddrinfo("pypi.org", 443)
    assert len(no_downloads) == seen + 2  # both recorded; removed so the guard's own check passes
    del no_downloads[seen:]
