"""In-place writes through views (`m[a:b, c:d] = k`, `y[0].add_(1)`, `a, b = y.chunk(2); b.sub_(1)`):
every later read of the tensor written into, and of its other views, sees the write, as in torch.
Each model is traced and scripted; the compiled fp32 outputs must equal torch's (tolerance 1e-6
of the output scale: the writes are copies, the arithmetic around them is a few fp32 ops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rblnc
from rblnc.errors import UnsupportedOpError
from rblnc.importers.torchscript import import_torchscript

pytestmark = [pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


class ShiftedWindowMask(nn.Module):
    """torchvision Swin's attention mask: a constant written region by region, then read."""

    def forward(self, x):
        mask = x.new_zeros((8, 8))
        count = 0
        for h in ((0, -4), (-4, -2), (-2, 8)):
            for w in ((0, -4), (-4, -2), (-2, 8)):
                mask[h[0]:h[1], w[0]:w[1]] = count
                count += 1
        mask = mask.view(2, 4, 2, 4).permute(0, 2, 1, 3).reshape(4, 16)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        return x.mean(dim=(2, 3)).reshape(2, 4, 1, 1) + mask


class FillSlices(nn.Module):
    def forward(self, x):
        y = x * 2
        y[:, 1:3] = 0
        y[0, :, 2, 1:] = 5.0
        return y + 1


class CopyIntoSlices(nn.Module):
    """Run-time values into a run-time tensor, and into a constant one."""

    def forward(self, x):
        y = x.clone()
        y[:, :, 0] = x[:, :, 1] * 3
        z = x.new_zeros(x.shape)
        z[:, 1] = x[:, 0]
        return y, z


class ArithmeticOnViews(nn.Module):
    def forward(self, x):
        y = x + 0
        y[0, 1].add_(5)
        y[:, 2:4].mul_(2)
        y[..., 0].clamp_(0, 0.1)
        y[:, 0].masked_fill_(y[:, 0] > 0.5, -1.0)
        a, b = y.chunk(2, dim=3)
        b.sub_(3)
        return y


class IndexPut(nn.Module):
    def forward(self, x):
        y = x * 1.5
        y[:, torch.tensor([0, 2])] = 7.0
        y[x > 0.9] = -2.0
        return y


class WriteThroughCopy(nn.Module):
    """reshape of a non-contiguous tensor copies: the write reaches z, not y."""

    def forward(self, x):
        y = x + 1
        z = y.transpose(2, 3).reshape(-1)
        z[0:4] = 9.0
        return y, z


class ViewReadAfterWrite(nn.Module):
    """A view taken before a write into its base sees the write."""

    def forward(self, x):
        y = x + 1
        row = y[0]
        y.add_(1)
        row[1].mul_(2.0)
        return row * 2, y


MODELS = [ShiftedWindowMask, FillSlices, CopyIntoSlices, ArithmeticOnViews, IndexPut, WriteThroughCopy,
          ViewReadAfterWrite]


@pytest.mark.parametrize("how", ["trace", "script"])
@pytest.mark.parametrize("model_class", MODELS, ids=lambda c: c.__name__)
def test_in_place_writes_through_views_match_torch(model_class, how):
    model = model_class().eval()
    x = torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x.clone())
        module = torch.jit.trace(model, x.clone(), check_trace=False) if how == "trace" else torch.jit.script(model)
    expected = expected if isinstance(expected, tuple) else (expected,)
    compiled = rblnc.compile_from_torchscript(module, input_info=[("x", [2, 4, 4, 4], "float32")], dtype="fp32")
    outputs = compiled.create_runtime().run(x.numpy())
    outputs = outputs if isinstance(outputs, list) else [outputs]
    assert len(outputs) == len(expected)
    for out, ref in zip(outputs, expected):
        ref = ref.numpy()
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_constant_writes_fold_away():
    """The Swin mask is all constants: no scatter or Where is left for the host."""
    graph = import_torchscript(torch.jit.trace(ShiftedWindowMask(), torch.rand(2, 4, 4, 4)))
    assert not {"ScatterND", "Where"} & set(graph.op_counts())


def test_write_at_run_time_positions_is_refused_not_dropped():
    class Model(nn.Module):
        def forward(self, x):
            y = x * 2
            y[torch.arange(2), x[:, 0].argmax(1)] = 0.0
            return y

    with pytest.raises(UnsupportedOpError, match=r"aten::index_put_ at .*indices computed at run time"):
        import_torchscript(torch.jit.trace(Model(), torch.rand(2, 4, 4)))


class DetectHead(nn.Module):
    """YOLOv5's head writes decoded boxes into slices of its prediction: y[..., 0:2] = ..."""

    def forward(self, x):
        y = x.sigmoid()
        y[..., 0:2] = y[..., 0:2] * 2 - 0.5
        y[..., 2:4] = (y[..., 2:4] * 2) ** 2
        return y


@pytest.mark.parametrize("model_class", [FillSlices, CopyIntoSlices, DetectHead], ids=lambda c: c.__name__)
def test_writes_into_boxes_stay_on_the_npu(model_class):
    """A slice write is Slices and Concats around the written box: no ScatterND or Where for the host."""
    model = model_class().eval()
    x = torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    compiled = rblnc.compile_from_torch(model, [("x", [2, 4, 4, 4], "float32")], dtype="fp32")
    assert not [r.op_type for p in compiled.artifact.partitions for r in p.fallback_reasons]
    expected = model(x.clone())
    expected = expected if isinstance(expected, tuple) else (expected,)
    outputs = compiled.create_runtime().run(x.numpy())
    outputs = outputs if isinstance(outputs, list) else [outputs]
    for out, ref in zip(outputs, expected):
        np.testing.assert_allclose(out, ref.detach().numpy(), rtol=0, atol=1e-6 * float(ref.abs().max()))
