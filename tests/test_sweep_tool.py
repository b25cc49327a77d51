"""tools/sweep.py on tiny stand-in models: each status (pass, rblnc error, wrong, traceback,
timeout) is given for the reason it names, and the report groups failures by cause."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import sweep  # noqa: E402

pytestmark = [pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


class _Scaled(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2.0, x.mean(dim=1)


class _Unsupported(torch.nn.Module):
    def forward(self, x):
        return torch.special.zeta(x, x)  # no converter


class _Tiny:
    """A stand-in source: its models are built the way the torchvision source builds them."""

    def names(self):
        return ["ok", "unsupported", "broken-compile", "wrong", "framework-fails", "chaotic", "wrong-not-chaotic"]

    def build(self, name):
        x = torch.rand(1, 4, 6, generator=torch.Generator().manual_seed(0))
        if name == "framework-fails":
            raise RuntimeError("the framework cannot build this")
        case = sweep.torch_case(_Unsupported() if name == "unsupported" else _Scaled(), [x])
        if name == "broken-compile":
            case.compile_fn = lambda: {}["no such key"]
        if name in ("wrong", "chaotic", "wrong-not-chaotic"):
            case.reference = [case.reference[0] * 1.01, case.reference[1]]
        if name == "chaotic":  # the framework itself moves 5 % under the nudge: no verdict
            case.reference_nudged = [case.reference[0] * 1.05, case.reference[1]]
        if name == "wrong-not-chaotic":  # it moves 1e-6: the 1 % difference is rblnc's
            case.reference_nudged = [case.reference[0] * (1 + 1e-6), case.reference[1]]
        return case


@pytest.fixture
def tiny_source(monkeypatch):
    monkeypatch.setitem(sweep.SOURCES, "tiny", _Tiny)


@pytest.mark.parametrize("name, status, fragment", [
    ("ok", "pass", "max |diff| / max |ref| = "),
    ("unsupported", "rblnc", "UnsupportedOpError"),
    ("broken-compile", "traceback", "KeyError: 'no such key'"),
    ("wrong", "wrong", "max |diff| / max |ref| = 9.9"),
    ("framework-fails", "n/a", "RuntimeError: the framework cannot build this"),
    ("chaotic", "n/a", "the framework's own output moves by 5.00e-02 of max |ref|"),
    ("wrong-not-chaotic", "wrong", "max |diff| / max |ref| = 9.9"),
])
def test_worker_classifies(tiny_source, name, status, fragment):
    result = sweep.run_worker("tiny", name)
    assert (result.status, result.source, result.model) == (status, "tiny", name)
    assert fragment in result.cause, result.cause
    if status == "pass":
        assert result.detail["devices"] and all(r <= sweep.RELATIVE_TOLERANCE for r in result.detail["ratios"])


def test_compare_is_relative_to_each_outputs_scale():
    ref = [np.array([1000.0, -2.0]), np.array([1e-6, 0.0])]
    ok, _, ratios = sweep.compare(ref, [ref[0] + 0.5, ref[1] * (1 + 5e-4)])
    assert ok and ratios == pytest.approx([5e-4, 5e-4])
    ok, text, _ = sweep.compare(ref, [ref[0], ref[1] + 1e-8])  # 1 % of the small output's scale
    assert not ok and "1.00e-02" in text
    ok, text, _ = sweep.compare(ref, [ref[0], ref[1][:1]])
    assert not ok and "has shape [1], the framework's [2]" in text
    ok, text, _ = sweep.compare([np.zeros(3)], [np.zeros(3)])
    assert not ok and text.startswith("vacuous")


def test_report_groups_causes_and_marks_the_coverage_branch_items():
    op = "UnsupportedOpError: Flat: 1 op(s) cannot be imported (aten::{}); docs/torch_ops.md ..."
    results = [
        sweep.Result("torchvision", "a", "pass", "max |diff| / max |ref| = 1e-07"),
        sweep.Result("torchvision", "b", "rblnc", op.format("lstm")),
        sweep.Result("torchvision", "c", "rblnc", op.format("lstm")),
        sweep.Result("torchvision", "swin_t", "wrong", "max |diff| / max |ref| = 1.7e-01"),
        sweep.Result("keras", "d", "timeout", "no result within 5s"),
    ]
    table = sweep.summary_table(results)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:3]}
    assert rows == {"torchvision": ["4", "1", "2", "1", "0", "0", "0", "0", "25.0%"],
                    "keras": ["1", "0", "0", "0", "0", "1", "0", "0", "0.0%"]}
    assert "2  rblnc: unsupported aten::lstm  [known: aten::lstm]" in table
    assert "[known: in-place writes into a slice (Swin attention mask)]" in table
    page = sweep.markdown(results)
    assert "| torchvision | 4 | 1 | 2 | 1 | 0 | 0 | 0 | 0 | 25.0 % | 3 |" in page
    assert "| keras/d | timeout | no result within 5s | - |" in page


def test_a_hung_model_is_a_timeout(tiny_source, monkeypatch, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(sweep, "__file__", str(script))
    result = sweep.run_one("tiny", "ok", timeout=1.0)
    assert (result.status, result.cause) == ("timeout", "no result within 1s")
