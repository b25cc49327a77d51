"""Reference PyTorch models (plain torch, seeded random weights) for testing and benchmarking the compiler.

Every builder returns an eval-mode model whose weights are a pure function of ``seed``
(drawn from a local ``torch.Generator``; global RNG state is never touched), bit-identical
across processes and thread counts on one machine; a CPU with other SIMD kernels may differ in
the last bits of the calibrated BatchNorm statistics (see below).

Weights are random but chosen so the networks behave like trained ones numerically:

* conv / linear weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1²);
* BatchNorm / LayerNorm affine weight ~ U(0.5, 1.5), bias ~ N(0, 0.1²), except the BN closing a
  residual branch, whose weight ~ U(0.1, 0.3): like the zero-init-residual trick of real training
  recipes, this keeps the branches refinements of the skip path (with unit-gain branches, deep
  activations on fresh inputs drift several-fold away from the calibrated statistics);
* BatchNorm running statistics are *calibrated*: one forward pass on a seeded random image batch
  (uniform [0, 1), like the zoo's example inputs) sets each BN's running_mean / running_var to the
  statistics of its actual input, then perturbs them (mean += N(0, 0.1²)·std, var *= U(0.5, 1.5)).
  The stats are thus non-trivial per channel (BN folding is really exercised) while activations
  stay O(1) through 50+ layers, so fp32 outputs neither blow up nor vanish. The calibration batch
  is fixed per model (never the caller's input size) and big enough for >= 7x7 maps at the
  deepest level: statistics gathered on 2x2 or 4x4 maps do not transfer to other images.

Dropout and stochastic depth are left out: they are identities at inference.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

Activation = Callable[[], nn.Module]


# --------------------------------------------------------------------------- initialisation


def _normal(shape, std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


def _uniform(shape, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


@torch.no_grad()
def _init_parameters(model: nn.Module, gen: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if not module.weight.requires_grad:  # frozen by design (e.g. the DFL arange kernel)
                continue
            if isinstance(module, nn.ConvTranspose2d):
                # Each output pixel of a stride==kernel transposed conv sees one tap per input channel.
                fan_in = module.in_channels * math.prod(module.kernel_size) // math.prod(module.stride)
            else:
                fan_in = module.weight[0].numel()
            module.weight.copy_(_normal(module.weight.shape, 1.0 / math.sqrt(fan_in), gen))
            if module.bias is not None:
                module.bias.copy_(_normal(module.bias.shape, 0.1, gen))
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            low, high = (0.1, 0.3) if getattr(module, "closes_residual_branch", False) else (0.5, 1.5)
            module.weight.copy_(_uniform(module.weight.shape, low, high, gen))
            module.bias.copy_(_normal(module.bias.shape, 0.1, gen))
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(_normal(module.weight.shape, 1.0, gen))
        else:
            # Free-standing parameters such as ViT's class token and position embedding.
            for param in module.parameters(recurse=False):
                param.copy_(_normal(param.shape, 0.5, gen))


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, gen: torch.Generator, input_shape: tuple[int, ...]) -> None:
    def set_stats_from_input(bn: nn.BatchNorm2d, args) -> None:
        x = args[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        var = var.clamp_min(1e-2 * float(var.mean()) + 1e-6)  # never amplify a near-constant channel
        bn.running_mean.copy_(mean + _normal(mean.shape, 0.1, gen) * var.sqrt())
        bn.running_var.copy_(var * _uniform(var.shape, 0.5, 1.5, gen))

    # Pre-hooks fire in execution order, so every BN is calibrated on inputs that already went
    # through the calibrated BNs upstream of it.
    hooks = [m.register_forward_pre_hook(set_stats_from_input) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # Multi-threaded conv kernels change the fp32 summation order with the thread count, which
    # would make the weights for a seed depend on it; one thread keeps them bit-identical.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model(torch.rand(input_shape, generator=gen))
    finally:
        torch.set_num_threads(threads)
        for hook in hooks:
            hook.remove()


def _finalize(model: nn.Module, seed: int, calibration_shape: tuple[int, ...] | None) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    _init_parameters(model, gen)
    if calibration_shape is not None:
        _calibrate_batchnorm(model, gen, calibration_shape)
    return model


# --------------------------------------------------------------------------- shared blocks


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding) + BatchNorm2d + optional activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: Activation | None = nn.ReLU, bn_eps: float = 1e-5):
        layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(c_out, eps=bn_eps)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def _closing_residual_branch(block: ConvBNAct) -> ConvBNAct:
    block[1].closes_residual_branch = True  # read by _init_parameters
    return block


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze_channels: int, act: Activation, gate: Activation):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2 / MobileNetV3 / EfficientNet-MBConv block: expand 1x1, depthwise kxk, [SE], project 1x1."""

    def __init__(self, c_in: int, c_expanded: int, c_out: int, kernel: int, stride: int, act: Activation,
                 se_channels: int = 0, se_act: Activation = nn.ReLU, se_gate: Activation = nn.Sigmoid,
                 bn_eps: float = 1e-5):
        super().__init__()
        layers: list[nn.Module] = []
        if c_expanded != c_in:
            layers.append(ConvBNAct(c_in, c_expanded, 1, act=act, bn_eps=bn_eps))
        layers.append(ConvBNAct(c_expanded, c_expanded, kernel, stride, groups=c_expanded, act=act, bn_eps=bn_eps))
        if se_channels:
            layers.append(SqueezeExcite(c_expanded, se_channels, se_act, se_gate))
        self.use_residual = stride == 1 and c_in == c_out
        project = ConvBNAct(c_expanded, c_out, 1, act=None, bn_eps=bn_eps)
        layers.append(_closing_residual_branch(project) if self.use_residual else project)
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_residual else y


class ClassifierHead(nn.Sequential):
    def __init__(self, *layers: nn.Module):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), *layers)


# --------------------------------------------------------------------------- ResNet-50

_IMAGENET_CALIBRATION = (2, 3, 224, 224)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.branch = nn.Sequential(ConvBNAct(c_in, width, 1), ConvBNAct(width, width, 3, stride),
                                    _closing_residual_branch(ConvBNAct(width, c_out, 1, act=None)))
        self.shortcut = (ConvBNAct(c_in, c_out, 1, stride, act=None)
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.branch(x) + self.shortcut(x))


def resnet50(*, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """ResNet-50 (torchvision layout, 25.6 M params). Input [N, 3, H, W], H and W divisible by 32."""
    layers: list[nn.Module] = [ConvBNAct(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            layers.append(Bottleneck(c_in, width, stride if i == 0 else 1))
            c_in = width * Bottleneck.expansion
    model = nn.Sequential(*layers, ClassifierHead(nn.Linear(c_in, num_classes)))
    return _finalize(model, seed, _IMAGENET_CALIBRATION)


# --------------------------------------------------------------------------- MobileNets, EfficientNet


def mobilenet_v2(*, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 (torchvision layout, width 1.0, 3.5 M params): ReLU6, linear bottlenecks."""
    layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, act=nn.ReLU6)]
    c_in = 32
    for expand, c_out, repeats, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(repeats):
            layers.append(InvertedResidual(c_in, c_in * expand, c_out, 3, stride if i == 0 else 1, nn.ReLU6))
            c_in = c_out
    layers.append(ConvBNAct(c_in, 1280, 1, act=nn.ReLU6))
    model = nn.Sequential(*layers, ClassifierHead(nn.Linear(1280, num_classes)))
    return _finalize(model, seed, _IMAGENET_CALIBRATION)


def mobilenet_v3_small(*, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """MobileNetV3-Small (torchvision layout, 2.5 M params): hard-swish, SE gated by hard-sigmoid."""
    bn_eps = 1e-3
    layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, act=nn.Hardswish, bn_eps=bn_eps)]
    # (c_in, kernel, c_expanded, c_out, use_se, activation, stride), as in torchvision.
    config = [(16, 3, 16, 16, True, nn.ReLU, 2), (16, 3, 72, 24, False, nn.ReLU, 2),
              (24, 3, 88, 24, False, nn.ReLU, 1), (24, 5, 96, 40, True, nn.Hardswish, 2),
              (40, 5, 240, 40, True, nn.Hardswish, 1), (40, 5, 240, 40, True, nn.Hardswish, 1),
              (40, 5, 120, 48, True, nn.Hardswish, 1), (48, 5, 144, 48, True, nn.Hardswish, 1),
              (48, 5, 288, 96, True, nn.Hardswish, 2), (96, 5, 576, 96, True, nn.Hardswish, 1),
              (96, 5, 576, 96, True, nn.Hardswish, 1)]
    for c_in, kernel, c_expanded, c_out, use_se, act, stride in config:
        se_channels = _make_divisible(c_expanded // 4) if use_se else 0
        layers.append(InvertedResidual(c_in, c_expanded, c_out, kernel, stride, act, se_channels,
                                       se_act=nn.ReLU, se_gate=nn.Hardsigmoid, bn_eps=bn_eps))
    layers.append(ConvBNAct(96, 576, 1, act=nn.Hardswish, bn_eps=bn_eps))
    head = ClassifierHead(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, num_classes))
    return _finalize(nn.Sequential(*layers, head), seed, _IMAGENET_CALIBRATION)


def efficientnet_b0(*, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """EfficientNet-B0 (torchvision layout, 5.3 M params): MBConv with SiLU and squeeze-excite."""
    bn_eps = 1e-3
    layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, act=nn.SiLU, bn_eps=bn_eps)]
    # (expand_ratio, kernel, stride, c_in, c_out, repeats)
    config = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    for expand, kernel, stride, c_in, c_out, repeats in config:
        for i in range(repeats):
            block_in = c_in if i == 0 else c_out
            layers.append(InvertedResidual(block_in, block_in * expand, c_out, kernel, stride if i == 0 else 1,
                                           nn.SiLU, se_channels=max(1, block_in // 4), se_act=nn.SiLU,
                                           se_gate=nn.Sigmoid, bn_eps=bn_eps))
    layers.append(ConvBNAct(320, 1280, 1, act=nn.SiLU, bn_eps=bn_eps))
    model = nn.Sequential(*layers, ClassifierHead(nn.Linear(1280, num_classes)))
    return _finalize(model, seed, _IMAGENET_CALIBRATION)


# --------------------------------------------------------------------------- YOLOv8n (ultralytics blocks)


class YoloConv(ConvBNAct):
    """ultralytics ``Conv``: Conv2d(bias=False) + BN(eps=1e-3) + SiLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1):
        super().__init__(c_in, c_out, kernel, stride, act=nn.SiLU, bn_eps=1e-3)


class YoloBottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool):
        super().__init__()
        self.cv1 = YoloConv(channels, channels, 3)
        second = YoloConv(channels, channels, 3)
        self.cv2 = _closing_residual_branch(second) if shortcut else second
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions; every bottleneck output is kept and concatenated."""

    def __init__(self, c_in: int, c_out: int, repeats: int, shortcut: bool):
        super().__init__()
        self.hidden = c_out // 2
        self.cv1 = YoloConv(c_in, 2 * self.hidden)
        self.cv2 = YoloConv((2 + repeats) * self.hidden, c_out)
        self.m = nn.ModuleList(YoloBottleneck(self.hidden, shortcut) for _ in range(repeats))

    def forward(self, x):
        ys = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max pools, all four maps concatenated."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = YoloConv(c_in, hidden)
        self.cv2 = YoloConv(hidden * 4, c_out)
        self.m = nn.MaxPool2d(kernel, 1, kernel // 2)

    def forward(self, x):
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(self.m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over reg_max bins, expectation via a fixed 1x1 conv."""

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)

    def forward(self, x):
        b, _, anchors = x.shape
        probs = x.view(b, 4, self.reg_max, anchors).transpose(2, 1).softmax(1)
        return self.conv(probs).view(b, 4, anchors)


def _make_anchors(feats: list[torch.Tensor], strides: list[int], offset: float = 0.5):
    """Anchor centres (in grid units) and per-anchor strides from the feature map shapes."""
    points, stride_column = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[2:]
        sy, sx = torch.meshgrid(torch.arange(h, dtype=feat.dtype) + offset,
                                torch.arange(w, dtype=feat.dtype) + offset, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_column.append(torch.full((h * w, 1), stride, dtype=feat.dtype))
    return torch.cat(points), torch.cat(stride_column)


def _dist2bbox_xywh(distance: torch.Tensor, anchor_points: torch.Tensor, dim: int = 1) -> torch.Tensor:
    left_top, right_bottom = distance.chunk(2, dim)
    x1y1 = anchor_points - left_top
    x2y2 = anchor_points + right_bottom
    return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)


class Detect(nn.Module):
    """YOLOv8 decoupled head with DFL box decoding; output [N, 4 + num_classes, anchors] (xywh pixels, scores)."""

    strides = (8, 16, 32)

    def __init__(self, num_classes: int, channels: tuple[int, ...], reg_max: int = 16):
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        self.outputs_per_anchor = num_classes + 4 * reg_max
        box_hidden = max(16, channels[0] // 4, 4 * reg_max)
        cls_hidden = max(channels[0], min(num_classes, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(YoloConv(c, box_hidden, 3), YoloConv(box_hidden, box_hidden, 3),
                                               nn.Conv2d(box_hidden, 4 * reg_max, 1)) for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(YoloConv(c, cls_hidden, 3), YoloConv(cls_hidden, cls_hidden, 3),
                                               nn.Conv2d(cls_hidden, num_classes, 1)) for c in channels)
        self.dfl = DFL(reg_max)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        batch = feats[0].shape[0]
        heads = [torch.cat((box(f), cls(f)), 1) for f, box, cls in zip(feats, self.cv2, self.cv3)]
        flat = torch.cat([h.view(batch, self.outputs_per_anchor, -1) for h in heads], 2)
        anchors, strides = (t.transpose(0, 1) for t in _make_anchors(heads, list(self.strides)))
        box, cls = flat.split((4 * self.reg_max, self.num_classes), 1)
        boxes = _dist2bbox_xywh(self.dfl(box), anchors.unsqueeze(0)) * strides
        return torch.cat((boxes, cls.sigmoid()), 1)


class YoloV8(nn.Module):
    def __init__(self, width: float, depth: float, num_classes: int, max_channels: int = 1024):
        super().__init__()

        def ch(c: int) -> int:
            return math.ceil(min(c, max_channels) * width / 8) * 8

        def n(repeats: int) -> int:
            return max(round(repeats * depth), 1)

        self.stem = nn.Sequential(YoloConv(3, ch(64), 3, 2), YoloConv(ch(64), ch(128), 3, 2),
                                  C2f(ch(128), ch(128), n(3), True))
        self.stage_p3 = nn.Sequential(YoloConv(ch(128), ch(256), 3, 2), C2f(ch(256), ch(256), n(6), True))
        self.stage_p4 = nn.Sequential(YoloConv(ch(256), ch(512), 3, 2), C2f(ch(512), ch(512), n(6), True))
        self.stage_p5 = nn.Sequential(YoloConv(ch(512), ch(1024), 3, 2), C2f(ch(1024), ch(1024), n(3), True),
                                      SPPF(ch(1024), ch(1024)))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down_p4 = C2f(ch(1024) + ch(512), ch(512), n(3), False)
        self.top_down_p3 = C2f(ch(512) + ch(256), ch(256), n(3), False)
        self.down_p3 = YoloConv(ch(256), ch(256), 3, 2)
        self.bottom_up_p4 = C2f(ch(256) + ch(512), ch(512), n(3), False)
        self.down_p4 = YoloConv(ch(512), ch(512), 3, 2)
        self.bottom_up_p5 = C2f(ch(512) + ch(1024), ch(1024), n(3), False)
        self.detect = Detect(num_classes, (ch(256), ch(512), ch(1024)))

    def forward(self, x):
        p3 = self.stage_p3(self.stem(x))
        p4 = self.stage_p4(p3)
        p5 = self.stage_p5(p4)
        n4 = self.top_down_p4(torch.cat((self.upsample(p5), p4), 1))
        n3 = self.top_down_p3(torch.cat((self.upsample(n4), p3), 1))
        n4 = self.bottom_up_p4(torch.cat((self.down_p3(n3), n4), 1))
        n5 = self.bottom_up_p5(torch.cat((self.down_p4(n4), p5), 1))
        return self.detect([n3, n4, n5])


def yolov8n(*, seed: int = 0, num_classes: int = 80) -> nn.Module:
    """YOLOv8n (ultralytics blocks, width 0.25, depth 0.33, 3.2 M params).

    Input [N, 3, H, W] with H, W divisible by 32; output [N, 4 + num_classes, H*W*(1/64+1/256+1/1024)]
    = boxes (cx, cy, w, h in input pixels) then sigmoid class scores; [1, 84, 8400] at 640x640.
    """
    # 8 x 256² rather than 2 x 640²: as well behaved at 128 and 640, and ~3x cheaper to build.
    return _finalize(YoloV8(width=0.25, depth=0.33, num_classes=num_classes), seed, (8, 3, 256, 256))


# --------------------------------------------------------------------------- UNet


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, base: int, levels: int = 4):
        super().__init__()

        def double_conv(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(ConvBNAct(c_in, c_out, 3), ConvBNAct(c_out, c_out, 3))

        widths = [base * 2**i for i in range(levels + 1)]
        self.pool = nn.MaxPool2d(2)
        self.encoders = nn.ModuleList(double_conv(c_in, c_out) for c_in, c_out in zip([in_channels] + widths, widths))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, 2) for c in reversed(widths[1:]))
        self.decoders = nn.ModuleList(double_conv(c, c // 2) for c in reversed(widths[1:]))
        self.classifier = nn.Conv2d(base, num_classes, 1)

    def forward(self, x):
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat((skips.pop(), up(x)), 1))
        return self.classifier(x)


def unet(*, seed: int = 0, num_classes: int = 2, base_width: int = 32) -> nn.Module:
    """Classic UNet (4 poolings, double 3x3 conv+BN+ReLU, ConvTranspose2d 2x2 up, skip concat).

    Input [N, 3, H, W] with H, W divisible by 16; output [N, num_classes, H, W] logits.
    """
    # Only local ops (no global pooling), so 128² calibrates all sizes alike; the bottleneck is 8x8.
    return _finalize(UNet(3, num_classes, base_width), seed, (2, 3, 128, 128))


# --------------------------------------------------------------------------- Transformers


class SelfAttention(nn.Module):
    """Multi-head self-attention written as plain Linear / matmul / softmax ops."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, score_bias: torch.Tensor | None = None):
        batch, tokens, dim = x.shape

        def split_heads(t):
            return t.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split_heads(self.q(x)), split_heads(self.k(x)), split_heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim ** -0.5)
        if score_bias is not None:
            scores = scores + score_bias
        context = torch.matmul(scores.softmax(-1), v)
        return self.proj(context.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerLayer(nn.Module):
    """Attention + GELU MLP; pre-norm (ViT) or post-norm (BERT)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = SelfAttention(dim, heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x, score_bias: torch.Tensor | None = None):
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), score_bias)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, score_bias))
        return self.norm2(x + self.mlp(x))


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int, mlp_dim: int,
                 num_classes: int):
        super().__init__()
        self.patch, self.grid = patch, image_size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, mlp_dim, 1e-6, pre_norm=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        batch, dim, grid_h, grid_w = x.shape
        x = x.flatten(2).transpose(1, 2)
        # Smaller inputs use the top-left grid_h x grid_w window of the position grid: plain
        # slicing, constant once traced; at image_size the window is the whole table.
        patch_pos = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, dim)[:, :grid_h, :grid_w]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        x = torch.cat((cls, x + patch_pos.reshape(1, -1, dim)), 1)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)[:, 0])


def vit_tiny(*, seed: int = 0, num_classes: int = 1000, image_size: int = 224) -> nn.Module:
    """ViT-Tiny/16 (dim 192, depth 12, 3 heads, MLP 768, 5.7 M params), class-token readout.

    Accepts any input [N, 3, H, W] with H, W multiples of 16 and <= image_size: position
    embeddings are learned for image_size and sliced to the input's patch grid.
    """
    model = VisionTransformer(image_size, 16, 192, 12, 3, 768, num_classes)
    return _finalize(model, seed, calibration_shape=None)


class BertEncoder(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int,
                 max_positions: int, type_vocab_size: int, with_pooler: bool):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(TransformerLayer(hidden, heads, intermediate, 1e-12, pre_norm=False)
                                    for _ in range(layers))
        self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh()) if with_pooler else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        seq_len = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = self.position_embeddings.weight[:seq_len].unsqueeze(0)
        x = self.word_embeddings(input_ids) + positions + self.token_type_embeddings(token_type_ids)
        x = self.embedding_norm(x)
        score_bias = None
        if attention_mask is not None:  # [N, T] with 1 = attend, 0 = padding
            score_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, score_bias)
        if self.pooler is None:
            return x
        return x, self.pooler(x[:, 0])


def bert_encoder(*, seed: int = 0, vocab_size: int = 8192, hidden: int = 256, layers: int = 4, heads: int = 4,
                 max_positions: int = 512, with_pooler: bool = False) -> nn.Module:
    """Small BERT encoder (post-LN, GELU FFN 4x hidden, 5.4 M params at the defaults).

    forward(input_ids [N, T] int64, attention_mask=None, token_type_ids=None) -> last hidden state
    [N, T, hidden] (or (last_hidden_state, pooled [N, hidden]) with with_pooler=True); any
    T <= max_positions works because position embeddings are sliced to T, as in BERT.
    """
    model = BertEncoder(vocab_size, hidden, layers, heads, 4 * hidden, max_positions, 2, with_pooler)
    return _finalize(model, seed, calibration_shape=None)
