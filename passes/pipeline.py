"""The ordered pass lists per optimisation level, with why each pass sits where it does."""

from __future__ import annotations

from .collapse_chains import collapse_reshapes, collapse_transposes
from .eliminate_common_subexpressions import eliminate_common_subexpressions
from .fold_batchnorm import fold_batchnorm, fold_channel_scale, rewrite_batchnorm_as_affine
from .fold_constants import fold_constants
from .fold_pads import fold_pads
from .fold_static_shapes import fold_static_shapes
from .fuse_activation import fuse_activation
from .fuse_bias import fuse_bias
from .fuse_elementwise_chains import fuse_elementwise_chains
from .fuse_matmul_add import fuse_matmul_add, fuse_matmul_bias
from .fuse_residual_add import fuse_residual_add
from .inline_known_branches import inline_known_branches
from .refine_shapes import refine_shapes
from .manager import GraphPass
from .recognize_activations import recognize_gelu, recognize_hardswish, recognize_silu
from .recognize_normalizations import recognize_layer_norm, recognize_softmax
from .remove_dead_nodes import remove_dead_nodes
from .remove_identities import remove_identities
from .rewrite_sum_as_add import rewrite_sum_as_add
from .sink_transposes import sink_transposes

# -O0 still folds constants: importers leave weight-producing subgraphs (ConstantOfShape,
# Unsqueeze of initializers...) that must become constants before partitioning, or the
# weights would be recomputed on the host at every inference.
# fold_static_shapes first: Shape->Gather->Concat->Reshape chains then fold entirely (docs/partitioning.md).
# An If on a folded condition is inlined at every level: left alone, its branch runs on the host.
LEVEL_0 = [fold_static_shapes, fold_constants, inline_known_branches, refine_shapes, remove_dead_nodes]

# -O1: rewrites that leave every computed value bit for bit the same.
LEVEL_1 = [
    fold_static_shapes,               # Shape of a static tensor is a constant: shape chains fold below
    fold_constants,                   # first: later matches need shape subgraphs to be constants
    inline_known_branches,            # an If on a now-constant condition becomes its branch's nodes
    refine_shapes,                    # shapes unknown at import, now that their inputs folded
    remove_identities,                # before matching: a Dropout or Identity between two ops hides the pair
    rewrite_sum_as_add,               # the fusions below look for Add only
    collapse_reshapes,                # Reshape chains from flattening code become one op
    collapse_transposes,              # and Transpose chains, before sinking looks at what is left
    eliminate_common_subexpressions,  # after folding, so equal folded constants merge too
    remove_dead_nodes,                # last: drops what the rewrites above left unread
]

# -O2 (default): also rewrites that may change rounding (folded weights) and our fused ops.
LEVEL_2 = [
    fold_static_shapes,
    fold_constants,
    inline_known_branches,
    refine_shapes,
    remove_identities,
    rewrite_sum_as_add,
    collapse_reshapes,
    collapse_transposes,
    sink_transposes,          # after collapsing: sinks what is left until it meets its inverse;
                              # before the fusions: a Transpose between a Conv and its bias Add
                              # or activation (TensorFlow's NHWC) would block them
    eliminate_common_subexpressions,
    fold_pads,                # before Conv fusions: they only take a Conv reading x directly
    recognize_softmax,        # recognitions before fusions: fuse_activation takes one
    recognize_layer_norm,     # SiLU/GELU/HardSwish op, not the five ops they were exported as;
    recognize_hardswish,
    recognize_silu,
    recognize_gelu,
    fuse_matmul_add,          # MatMul+Add -> Gemm before BN folding, which folds into Gemm
    fold_batchnorm,           # before bias and activation fusion: BN sits between Conv and both
    fold_channel_scale,       # tf2onnx's BN: Conv -> Mul (here) -> Add (fuse_bias)
    fuse_bias,                # after BN folding: folds a later constant Add into the new bias
    fuse_matmul_bias,         # batched MatMul + bias (transformers), after the 2-D ones became Gemm
    fuse_residual_add,        # before activations: the Add comes first, then Relu(conv + skip)
    fuse_activation,
    remove_dead_nodes,
]

# -O3: also joins the elementwise chains left over into one op each.
LEVEL_3 = LEVEL_2[:-1] + [
    rewrite_batchnorm_as_affine,  # BNs no Conv took (pre-activation nets) join the chains
    fuse_elementwise_chains,  # last fusion: takes only what the specific fusions did not
    remove_dead_nodes,
]

PIPELINES: dict[int, list[GraphPass]] = {0: LEVEL_0, 1: LEVEL_1, 2: LEVEL_2, 3: LEVEL_3}

ALL_PASSES: dict[str, GraphPass] = {p.name: p for level in PIPELINES.values() for p in level}


def pipeline(level: int, disabled: set[str] | frozenset[str] = frozenset()) -> list[GraphPass]:
    if level not in PIPELINES:
        raise ValueError(f"optimisation level must be one of {sorted(PIPELINES)}, got {level}")
    unknown = set(disabled) - set(ALL_PASSES)
    if unknown:
        raise ValueError(f"unknown pass(es) to disable: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(ALL_PASSES))}")
    return [p for p in PIPELINES[level] if p.name not in disabled]
