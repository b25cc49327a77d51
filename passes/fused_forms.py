"""The fused op (ai.rblnc) each fusable op becomes, so fusions can add an epilogue to either."""

from __future__ import annotations

from rblnc.ir import RBLNC_DOMAIN, Graph, Node

from .rewriting import static_shape

# Standard op -> the ai.rblnc op that computes it with an epilogue.
FUSED_FORM = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}
FUSED_TYPES = {f"{RBLNC_DOMAIN}::{op}" for op in FUSED_FORM.values()}


def fused_form(graph: Graph, node: Node) -> tuple[str, list[str], dict] | None:
    """(fused op type, inputs, attrs) computing `node` with no epilogue yet, or None when
    `node` is neither a fusable standard op nor already a fused one."""
    if node.domain == RBLNC_DOMAIN and node.op_type in FUSED_FORM.values():
        return node.op_type, list(node.inputs), dict(node.attrs)
    if node.domain or node.op_type not in FUSED_FORM:
        return None
    attrs = dict(node.attrs, activation="", activation_params=[])
    if node.op_type == "Conv" and "kernel_shape" not in attrs:
        weight = static_shape(graph, node.inputs[1])
        if weight is None:
            return None
        attrs["kernel_shape"] = list(weight[2:])  # the NPU support check reads it
    return FUSED_FORM[node.op_type], list(node.inputs), attrs


def has_epilogue(node: Node) -> bool:
    return bool(node.attrs.get("activation"))
