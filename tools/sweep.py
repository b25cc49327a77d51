"""Coverage sweep: real models from torchvision, keras.applications, transformers and PyPI wheels through rblnc.

    python tools/sweep.py [--source torchvision,keras,...] [--only REGEX] [--timeout S]
                          [--results build/sweep] [--markdown docs/sweep.md] [--list]

Each model is built with random weights (or read from a wheel's ONNX file), compiled in fp32,
run on the emulator and compared with its own framework (torch eager, Keras, onnxruntime): it
passes when every output has max |diff| <= 1e-3 x max |ref|. One model per subprocess with a
timeout, so a crash or a hang costs one row. Results merge into build/sweep/<source>.json by model,
so the sweep can run in pieces (and sources at once); the table groups failures by cause:

    pass        compiles, runs and matches
    rblnc       rblnc's own error (an RBLNError: names the op and where; the user can act on it)
    wrong       runs but an output differs (or has another shape): a silent wrong answer
    traceback   an exception that is not rblnc's (a bug to turn into a fix or a clear error)
    timeout     no result within the per-model timeout
    crash       the worker died (signal, out of memory)
    n/a         the framework itself could not build or run the model (not rblnc's doing)

`make sweep` runs it all; it is never part of `make test` (an hour or more on 2 cores).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

REGISTRY_CACHE = Path(os.environ.get("RBLNC_REGISTRY_CACHE", ROOT / "build" / "cache" / "registry"))
RESULTS = ROOT / "build" / "sweep"   # one <source>.json each, so sources can run at once
DEFAULT_TIMEOUT_S = 900
RELATIVE_TOLERANCE = 1e-3
COUNTED = ("pass", "rblnc", "wrong", "traceback", "timeout", "crash")

# The bugs issue 18 listed, fixed with it: (regex on the cause or model, what); a failure that
# matches one again is a regression of that fix.
KNOWN_COVERAGE = (
    (r"aten::addcmul", "aten::addcmul"),
    (r"aten::im2col", "aten::im2col (nn.Unfold)"),
    (r"aten::repeat_interleave", "aten::repeat_interleave"),
    (r"aten::lstm", "aten::lstm"),
    (r"_native_multi_head_attention", "aten::_native_multi_head_attention"),
    (r"\bErfc\b", "Keras GELU: tf2onnx Erfc handler"),
    (r"in the model, input_info gives", "Paddle dim_value -1"),
    (r"TypeInferenceError.*expected to have type but instead is null|\bIf\b.*outer", "If with outer-scope values"),
    (r"writes? into a (view|slice)|slice write|in-place", "in-place writes into a slice"),
    (r"^torchvision/swin", "in-place writes into a slice (Swin attention mask)"),
    (r"AveragePool", "AveragePool legalisation"),
    (r"non-tensor|constant_args", "constant_args for non-tensor forward args"),
)


# What a failure's cause line does not say, found by looking at it (docs/sweep.md shows these).
NOTES = {
    "keras/EfficientNetV2M": "random weights grow its activations to ~1e5 and make it chaotic: TensorFlow "
                             "against itself (TF_ENABLE_ONEDNN_OPTS=1 vs 0) differs by 51 % of max |ref|, so fp32 "
                             "cannot tell right from wrong here; EfficientNetV2S/B0-B7 pass at ~1e-6",
    "keras/EfficientNetV2L": "the same at ~7e8: TensorFlow against itself differs by 99 % of max |ref|",
    "torchvision/deeplabv3_mobilenet_v3_large": "passes, but weakly: with random weights its output is constant "
                                                "over the image (std 1e-8)",
}


@dataclass
class Result:
    source: str
    model: str
    status: str = "crash"
    cause: str = ""          # one line: the error, or how far off the outputs are
    stage: str = ""          # build, compile, run, compare
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)   # devices, max diffs, input shapes

    @property
    def key(self) -> str:
        return f"{self.source}/{self.model}"

    @property
    def group(self) -> str:
        """The cause without model-specific details, so alike failures count together."""
        if self.status == "wrong":
            return "wrong: outputs differ from the framework's"
        text = self.cause
        ops = re.findall(r"(?:aten|prim)::\w+", text)
        if "UnsupportedOpError" in text and ops:
            return f"{self.status}: unsupported {', '.join(sorted(set(ops)))}"
        text = re.sub(r"'[^']*'", "'…'", text)
        text = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text)
        return f"{self.status}: {text}"[:160]

    @property
    def known(self) -> str:
        """Which of the bugs issue 18 listed (fixed with it) this failure is, or ''."""
        if self.status == "pass":
            return ""
        for pattern, what in KNOWN_COVERAGE:
            if re.search(pattern, self.cause) or re.search(pattern, self.key):
                return what
        return ""


# ----------------------------------------------------------------------------- comparing

def leaves(value) -> list:
    """The tensors of a nested output (tuple, list, dict, ModelOutput) in order; other values
    (None, numbers) are dropped."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in leaves(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in leaves(v)]
    return [value] if hasattr(value, "shape") and hasattr(value, "dtype") else []


def flatten(value) -> list:
    """The tensors of a nested output (torch, TF or numpy) as numpy arrays."""
    return [np.asarray(t.detach()) if hasattr(t, "detach") else np.asarray(t) for t in leaves(value)]


def compare(reference: list, outputs: list) -> tuple[bool, str, list]:
    if len(reference) != len(outputs):
        return False, f"{len(outputs)} outputs, the framework gives {len(reference)}", []
    ratios = []
    for i, (ref, out) in enumerate(zip(reference, outputs)):
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.shape != out.shape:
            return False, f"output {i} has shape {list(out.shape)}, the framework's {list(ref.shape)}", ratios
        if ref.size == 0:
            ratios.append(0.0)
            continue
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        if not np.array_equal(np.isfinite(ref64), np.isfinite(out64)):
            return False, f"output {i}: non-finite values differ", ratios
        finite = np.isfinite(ref64)
        scale = float(np.abs(ref64[finite]).max()) if finite.any() else 0.0
        diff = float(np.abs(ref64[finite] - out64[finite]).max()) if finite.any() else 0.0
        ratios.append(diff / scale if scale else (0.0 if diff == 0 else float("inf")))
    if reference and all(not np.any(np.asarray(r)) for r in reference):
        return False, "vacuous: every reference output is all zeros (the random weights need another init)", ratios
    worst = max(ratios, default=0.0)
    return worst <= RELATIVE_TOLERANCE, f"max |diff| / max |ref| = {worst:.2e}", ratios


# ----------------------------------------------------------------------------- sources

class Case:
    """What a source gives the worker: a compile callable, the inputs and the reference."""

    def __init__(self, compile_fn, inputs: list, reference: list, reference_nudged: list | None = None):
        self.compile_fn, self.inputs, self.reference = compile_fn, inputs, reference
        # The framework's outputs for the inputs moved by NUDGE (relative): how far the model's
        # own answer moves under a change far below fp32 rounding of the whole net. Where that
        # alone exceeds the tolerance, the random-weight model is chaotic and fp32 cannot tell
        # right from wrong: the result is n/a, not a verdict on rblnc.
        self.reference_nudged = reference_nudged


NUDGE = 1e-6


def noise_floor(case: Case) -> float:
    """max |ref(x) - ref(x nudged)| / max |ref(x)| over the outputs (0 when not measured)."""
    if case.reference_nudged is None:
        return 0.0
    _, _, ratios = compare(case.reference, case.reference_nudged)
    return max(ratios, default=0.0)


class _Flat:
    """A torch module whose forward returns its wrapped model's tensors as a flat tuple."""

    @staticmethod
    def wrap(model, **call_kwargs):
        import torch

        class Flat(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *args):
                return tuple(leaves(self.model(*args, **call_kwargs)))

        return Flat().eval()


def torch_case(model, inputs) -> Case:
    """Trace a torch model (outputs flattened); the reference is eager torch."""
    import torch
    import rblnc

    flat = _Flat.wrap(model.eval())
    with torch.no_grad():
        reference = [t.numpy() for t in flat(*inputs)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(flat, tuple(inputs), check_trace=False)
    return Case(lambda: rblnc.compile_from_torchscript(traced, dtype="fp32"),
                [t.numpy() for t in inputs], reference)


class Torchvision:
    """Every classification and segmentation model in torchvision.models, random weights."""

    size = 128
    sizes = {"maxvit_t": 224}  # its 7x7 partitions need 224
    kwargs = {"vit_b_16": {"image_size": 128}, "vit_b_32": {"image_size": 128}, "vit_l_16": {"image_size": 128},
              "vit_l_32": {"image_size": 128}, "vit_h_14": {"image_size": 112}}

    def names(self) -> list[str]:
        from torchvision_compat import import_torchvision

        models = import_torchvision().models
        return sorted(models.list_models(module=models)) + sorted(models.list_models(module=models.segmentation))

    def build(self, name: str) -> Case:
        import torch
        from torchvision_compat import import_torchvision

        models = import_torchvision().models
        torch.manual_seed(0)
        kwargs = dict(self.kwargs.get(name, {}))
        if name in models.list_models(module=models.segmentation):
            kwargs.update(weights_backbone=None, num_classes=21)
        model = models.get_model(name, weights=None, **kwargs)
        # Some initialise a layer to zeros (ViT's classifier head): every output would be 0 and
        # match anything, so such weights get small random values
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if parameter_name.endswith("weight") and parameter.dim() > 1 and not parameter.any():
                    parameter.normal_(0.0, 0.02)
        size = self.sizes.get(name, kwargs.get("image_size", self.size))
        return torch_case(model, [torch.rand(1, 3, size, size)])


class Keras:
    """Every model in keras.applications, weights=None, a small input where allowed."""

    size = 128
    sizes = {"NASNetLarge": 331, "NASNetMobile": 224}  # their cell shapes need the default size

    def names(self) -> list[str]:
        import keras

        return sorted(n for n in dir(keras.applications) if n[0].isupper())

    def build(self, name: str) -> Case:
        import keras
        import rblnc

        keras.utils.set_random_seed(0)
        size = self.sizes.get(name, self.size)
        constructor = getattr(keras.applications, name)
        # logits, not softmax: with random weights many nets' activations shrink to ~1e-7, and a
        # softmax of such logits is 1/1000 everywhere, which any answer would match
        logits = {"classifier_activation": None} if "classifier_activation" in inspect.signature(
            constructor).parameters else {}
        model = constructor(weights=None, input_shape=(size, size, 3), **logits)
        x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
        reference = flatten(model(x, training=False))
        nudged = flatten(model(x * np.float32(1 + NUDGE), training=False))
        return Case(lambda: rblnc.compile_from_tf_function(model, input_info=[("x", list(x.shape), np.float32)],
                                                           dtype="fp32"), [x], reference, nudged)


class Transformers:
    """The transformers architectures deployed most, small configs, random weights, traced."""

    def names(self) -> list[str]:
        return list(self._builders())

    @staticmethod
    def _builders() -> dict:
        import torch
        from torchvision_compat import import_torchvision

        import_torchvision()  # transformers imports torchvision when it is installed
        import transformers as tr

        text = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=64)

        def ids(seq=12, vocab=99):
            return torch.randint(1, vocab, (1, seq), generator=torch.Generator().manual_seed(0))

        def image(size=64, channels=3):
            return torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0))

        vit = dict(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37)
        return {
            "bert": lambda: (tr.BertModel(tr.BertConfig(**text)), [ids()]),
            "roberta": lambda: (tr.RobertaModel(tr.RobertaConfig(**text, pad_token_id=1)), [ids()]),
            "distilbert": lambda: (tr.DistilBertModel(tr.DistilBertConfig(
                vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64)), [ids()]),
            "vit": lambda: (tr.ViTModel(tr.ViTConfig(**vit)), [image()]),
            "deit": lambda: (tr.DeiTModel(tr.DeiTConfig(**vit)), [image()]),
            "swin": lambda: (tr.SwinModel(tr.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[2, 2],
                                                         num_heads=[2, 4], window_size=4)), [image()]),
            "convnext": lambda: (tr.ConvNextModel(tr.ConvNextConfig(hidden_sizes=[16, 32, 48, 64],
                                                                    depths=[1, 1, 2, 1])), [image()]),
            "resnet": lambda: (tr.ResNetModel(tr.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64],
                                                              depths=[1, 1, 1, 1])), [image()]),
            "mobilevit": lambda: (tr.MobileViTModel(tr.MobileViTConfig(
                image_size=64, hidden_sizes=[32, 40, 48], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                initializer_range=0.5)), [image()]),  # at the default 0.02 its activations vanish to 0
            "segformer": lambda: (tr.SegformerForSemanticSegmentation(tr.SegformerConfig(
                hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1],
                decoder_hidden_size=32, num_labels=5)), [image()]),
            "detr": lambda: (tr.DetrForObjectDetection(tr.DetrConfig(
                use_timm_backbone=False, use_pretrained_backbone=False,
                backbone_config=tr.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                                out_features=["stage4"]),
                d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_queries=10,
                num_labels=5)), [image()]),
            "whisper-encoder": lambda: (tr.WhisperModel(tr.WhisperConfig(
                d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=16,
                max_source_positions=30, vocab_size=99, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                decoder_start_token_id=1)).get_encoder(),
                [torch.rand(1, 16, 60, generator=torch.Generator().manual_seed(0))]),
            "wav2vec2": lambda: (tr.Wav2Vec2Model(tr.Wav2Vec2Config(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4, vocab_size=99)),
                [torch.rand(1, 1600, generator=torch.Generator().manual_seed(0))]),
            "clip-vision": lambda: (tr.CLIPVisionModel(tr.CLIPVisionConfig(**vit)), [image()]),
            "clip-text": lambda: (tr.CLIPTextModel(tr.CLIPTextConfig(**text)), [ids()]),
            "t5-encoder": lambda: (tr.T5EncoderModel(tr.T5Config(
                vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)), [ids()]),
            "gpt2": lambda: (tr.GPT2Model(tr.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4,
                                                        n_positions=64, use_cache=False)), [ids()]),
            "llama": lambda: (tr.LlamaModel(tr.LlamaConfig(
                vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, use_cache=False)), [ids()]),
        }

    def build(self, name: str) -> Case:
        import torch

        torch.manual_seed(0)
        model, inputs = self._builders()[name]()
        model.eval()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        return torch_case(model, inputs)


class Registry:
    """ONNX files that PyPI packages ship in their wheels (tools/registry_models.py)."""

    def names(self) -> list[str]:
        import registry_models

        return list(registry_models.BY_NAME)

    def build(self, name: str) -> Case:
        import onnx
        import onnxruntime
        import rblnc
        import registry_models

        spec = registry_models.BY_NAME[name]
        path = registry_models.fetch(name)
        model = onnx.load(str(path), load_external_data=False)
        given = dict(spec.inputs)
        values = dict(spec.values)
        initializers = {t.name for t in model.graph.initializer}
        rng = np.random.default_rng(0)
        info, feeds = [], {}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            shape = given.get(value.name) or [d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim]
            if spec.example == "text" and len(shape) == 4:
                array = text_image(shape).astype(dtype)
            elif value.name in values:
                array = np.asarray(values[value.name], dtype=dtype).reshape(shape)
            elif np.issubdtype(dtype, np.floating):
                array = rng.random(shape, dtype=np.float32).astype(dtype)
            else:
                array = rng.integers(0, 2, shape).astype(dtype)
            info.append((value.name, list(shape), dtype))
            feeds[value.name] = array
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        reference = session.run(None, feeds)
        return Case(lambda: rblnc.compile_from_onnx(str(path), input_info=info, dtype="fp32"),
                    list(feeds.values()), reference)


def text_image(shape) -> np.ndarray:
    """Lines of black text on white, normalised as PaddleOCR does, NCHW. On random pixels a text
    detector's output is ~1e-5 everywhere, where fp32 rounding alone (onnxruntime against itself
    with and without its graph optimisations) moves it by more than the 1e-3 relative tolerance."""
    import cv2

    _, _, height, width = shape
    image = np.full((height, width, 3), 255, np.uint8)
    for i, line in enumerate(["rblnc sweep 2026", "TEXT DETECTION", "hello world 123", "PaddleOCR v4 det"]):
        cv2.putText(image, line, (20, 80 + i * height // 5), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 3)
    normalised = (image / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return normalised.transpose(2, 0, 1)[None].astype(np.float32)


SOURCES = {"torchvision": Torchvision, "keras": Keras, "transformers": Transformers, "registry": Registry}


# ----------------------------------------------------------------------------- worker

def _one_line(exc: BaseException) -> str:
    text = str(exc).replace(str(REGISTRY_CACHE) + os.sep, "")  # the cache folder is this machine's
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    text = " | ".join(lines[:3]) if lines else ""
    return f"{type(exc).__name__}: {text}"[:400]


def _where(exc: BaseException) -> str:
    """The innermost frame inside rblnc (else the innermost), for a traceback's cause."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/rblnc/" in f.filename or "/passes/" in f.filename]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return ""
    return f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"


def run_worker(source: str, name: str) -> Result:
    from rblnc.errors import RBLNError
    from rblnc.format.artifact import Device

    result = Result(source, name)
    start = time.perf_counter()
    result.stage = "build"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case = SOURCES[source]().build(name)
    except Exception as exc:  # the framework could not build or run it: not rblnc's doing
        result.status, result.cause = "n/a", _one_line(exc)
        result.seconds = time.perf_counter() - start
        return result
    result.detail["inputs"] = [list(np.shape(x)) for x in case.inputs]
    try:
        result.stage = "compile"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = case.compile_fn()
        devices = {p.device for p in compiled.artifact.partitions}
        result.detail["devices"] = sorted(("npu" if d == Device.NPU else "host") for d in devices)
        result.detail["host_fallbacks"] = sorted({f"{r.op_type}" for p in compiled.artifact.partitions
                                                   for r in p.fallback_reasons if hasattr(r, "op_type")})
        result.stage = "run"
        runtime = compiled.create_runtime()
        outputs = runtime.run(*case.inputs)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        result.stage = "compare"
        ok, text, ratios = compare(case.reference, outputs)
        result.detail["ratios"] = [float(f"{r:.3g}") for r in ratios]
        floor = noise_floor(case)
        if not ok and floor > RELATIVE_TOLERANCE:
            text = (f"chaotic: {text}, but the framework's own output moves by {floor:.2e} of max |ref| when "
                    f"the input moves by {NUDGE:g} (random weights): the check cannot decide")
        result.status, result.cause = ("pass" if ok else "n/a" if text.startswith(("vacuous", "chaotic"))
                                       else "wrong"), text
    except RBLNError as exc:
        result.status, result.cause = "rblnc", _one_line(exc)
    except Exception as exc:
        result.status, result.cause = "traceback", _one_line(exc) + _where(exc)
    result.seconds = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- driver

def run_one(source: str, name: str, timeout: float) -> Result:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", source, name, "--worker-out", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if out.stat().st_size:
            return Result(**json.loads(out.read_text()))
        if proc.returncode == -9:
            return Result(source, name, "crash", "worker killed by SIGKILL (most likely the kernel's out-of-memory "
                          "killer)", seconds=time.perf_counter() - start)
        tail = [l for l in (proc.stderr or "").strip().splitlines() if l.strip()][-1:]
        return Result(source, name, "crash", f"worker exited with status {proc.returncode}: {' '.join(tail)}"[:400],
                      seconds=time.perf_counter() - start)
    except subprocess.TimeoutExpired:
        return Result(source, name, "timeout", f"no result within {timeout:.0f}s", seconds=timeout)
    finally:
        out.unlink(missing_ok=True)


def load_results(folder: Path) -> dict[str, Result]:
    results = {}
    for source in SOURCES:
        path = folder / f"{source}.json"
        if path.exists():
            results.update({f"{r['source']}/{r['model']}": Result(**r) for r in json.loads(path.read_text())})
    return results


def save_result(folder: Path, result: Result) -> None:
    """Merge one result into its source's file, re-read first: two sweeps of one source (on
    disjoint --only filters) may write it in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.source}.json"
    current = {k: r for k, r in load_results(folder).items() if r.source == result.source}
    current[result.key] = result
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps([asdict(current[k]) for k in sorted(current)], indent=1) + "\n")
    temporary.replace(path)


def per_source(results: list[Result]):
    """(source, its results, counts by status, pass rate in % of the counted statuses) per source."""
    by_source = collections.defaultdict(list)
    for r in results:
        by_source[r.source].append(r)
    for source in [s for s in SOURCES if s in by_source]:
        counts = collections.Counter(r.status for r in by_source[source])
        counted = sum(counts[s] for s in COUNTED)
        yield source, by_source[source], counts, (100.0 * counts["pass"] / counted if counted else 0.0)


def summary_table(results: list[Result]) -> str:
    lines = [f"{'source':<14}{'models':>7}{'pass':>6}{'rblnc':>7}{'wrong':>7}{'trace':>7}{'timeout':>9}"
             f"{'crash':>7}{'n/a':>5}{'pass %':>9}"]
    for source, rs, counts, rate in per_source(results):
        lines.append(f"{source:<14}{len(rs):>7}{counts['pass']:>6}{counts['rblnc']:>7}{counts['wrong']:>7}"
                     f"{counts['traceback']:>7}{counts['timeout']:>9}{counts['crash']:>7}{counts['n/a']:>5}"
                     f"{rate:>8.1f}%")
    groups = collections.defaultdict(list)
    for r in results:
        if r.status != "pass":
            groups[r.group].append(r)
    if groups:
        lines += ["", "failures by cause:"]
        for group, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            known = sorted({r.known for r in rs if r.known})
            tag = f"  [known: {'; '.join(known)}]" if known else ""
            names = ", ".join(r.key for r in rs[:6]) + (" ..." if len(rs) > 6 else "")
            lines.append(f"  {len(rs):>3}  {group}{tag}\n         {names}")
    return "\n".join(lines)


def markdown(results: list[Result], not_run: dict[str, list[str]] | None = None) -> str:
    """docs/sweep.md: the table per source and every model that does not pass, with its cause."""
    lines = [
        "# Coverage sweep",
        "",
        "Real models nobody here wrote, through `rblnc` in fp32, each compared with its own framework",
        "(torch eager, Keras, onnxruntime): a model passes when every output has",
        "max |diff| <= 1e-3 x max |ref|. `make sweep` runs it (`tools/sweep.py`, one model per",
        "subprocess with a timeout; `--source`, `--only`, `--timeout` run pieces; results merge into",
        "`build/sweep/<source>.json`); `python tools/sweep.py --markdown docs/sweep.md` rewrites this page.",
        "",
        "Sources: every classification and segmentation model of `torchvision.models` (random weights,",
        "128x128 input, 224 for MaxViT, ViTs built for 128/112), every `keras.applications` model",
        "(weights=None, 128x128, NASNet at its default size), small configs of the transformers",
        "architectures deployed most (random weights, `torch.jit.trace`), and the ONNX files PyPI",
        "wheels ship (`tools/registry_models.py`, compared with onnxruntime).",
        "",
        "Statuses: **pass**; **rblnc**: rblnc's own error naming the op and where (actionable);",
        "**wrong**: a silent wrong answer; **traceback**: an exception that is not rblnc's;",
        "**timeout**; **crash**; **n/a** (not counted): the framework itself cannot build the model, or",
        "the check cannot decide (an all-zero reference; a chaotic random-weight model whose framework",
        "output moves beyond the tolerance when its input moves by 1e-6).",
        "",
        "| source | models | pass | rblnc error | wrong | traceback | timeout | crash | n/a | pass rate "
        "| failures that are issue 18's listed bugs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for source, rs, c, rate in per_source(results):
        lines.append(f"| {source} | {len(rs)} | {c['pass']} | {c['rblnc']} | {c['wrong']} | {c['traceback']} | "
                     f"{c['timeout']} | {c['crash']} | {c['n/a']} | {rate:.1f} % | "
                     f"{sum(1 for r in rs if r.known)} |")
    failing = [r for r in results if r.status != "pass"]
    lines += ["", "## Every model that does not pass", ""]
    if not failing:
        lines.append("None.")
    else:
        lines += ["| model | status | cause | issue 18's listed bug |", "|---|---|---|---|"]
        for r in failing:
            cause = (r.cause if len(r.cause) <= 300 else r.cause[:297] + "...").replace("|", "\\|")
            note = f" *Note: {NOTES[r.key]}.*" if r.key in NOTES else ""
            lines.append(f"| {r.key} | {r.status} | {cause}{note} | {r.known or '-'} |")
    weak = [f"{key}: {note}" for key, note in NOTES.items() if any(r.key == key and r.status == "pass" for r in results)]
    if weak:
        lines += ["", "Passes that prove less than they seem:", ""] + [f"- {w}." for w in weak]
    missing = {source: names for source, names in (not_run or {}).items() if names}
    if missing:
        lines += ["", "## Not run in this sweep", ""]
        lines += [f"- **{source}**: {', '.join(names)}" for source, names in missing.items()]
    lines += ["", "## Every model swept", ""]
    for source, rs, _, _ in per_source(results):
        passed = [r.model for r in rs if r.status == "pass"]
        lines.append(f"- **{source}** ({len(passed)} pass): {', '.join(passed)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=",".join(SOURCES), help=f"comma-separated: {', '.join(SOURCES)}")
    parser.add_argument("--only", default=None, help="only models whose name matches this regex")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per model")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder of <source>.json results (merged by model, not replaced)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the docs page here")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="first merge the results of these folders (sweeps run apart) into --results")
    parser.add_argument("--report-only", action="store_true", help="print (and write) from the JSON, run nothing")
    parser.add_argument("--list", action="store_true", help="list the models of the chosen sources and exit")
    parser.add_argument("--worker", nargs=2, metavar=("SOURCE", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = run_worker(*args.worker)
        args.worker_out.write_text(json.dumps(asdict(result)))
        return 0

    sources = [s.strip() for s in args.source.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        parser.error(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    for folder in args.merge:
        for result in load_results(folder).values():
            save_result(args.results, result)
    results = load_results(args.results)
    if not args.report_only:
        for source in sources:
            names = SOURCES[source]().names()
            if args.only:
                names = [n for n in names if re.search(args.only, n)]
            if args.list:
                print("\n".join(f"{source}/{n}" for n in names))
                continue
            for i, name in enumerate(names):
                result = run_one(source, name, args.timeout)
                results[result.key] = result
                save_result(args.results, result)
                print(f"[{i + 1}/{len(names)}] {result.key:<40} {result.status:<9} {result.seconds:6.1f}s  "
                      f"{result.cause[:150]}", flush=True)
        if args.list:
            return 0
    chosen = [r for r in results.values() if r.source in sources]
    print(summary_table(chosen))
    if args.markdown:
        ordered = sorted(results.values(), key=lambda r: (list(SOURCES).index(r.source), r.model))
        not_run = {source: [n for n in SOURCES[source]().names() if f"{source}/{n}" not in results]
                   for source in SOURCES}
        args.markdown.write_text(markdown(ordered, not_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
