"""A readable text dump of the IR, one line per node, for --dump-ir-after and debugging."""

from __future__ import annotations

import numpy as np

from .graph import Graph


def format_attr(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor<{value.dtype.name}{list(value.shape)}>"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def dump(graph: Graph, *, max_constants: int = 20) -> str:
    lines = [f"graph {graph.name} (opset {graph.opset}, {len(graph)} nodes)"]
    for name in graph.inputs:
        lines.append(f"  input  {name}: {graph.tensors[name]}")
    for i, (name, value) in enumerate(graph.constants.items()):
        if i == max_constants:
            lines.append(f"  ... {len(graph.constants) - max_constants} more constants")
            break
        lines.append(f"  const  {name}: {graph.tensors[name]}")
    for node in graph.topological_order():
        attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in sorted(node.attrs.items()))
        outs = ", ".join(f"{o}: {graph.tensors.get(o, '?')}" for o in node.outputs)
        ins = ", ".join(node.inputs)
        lines.append(f"  {outs} = {node.qualified_type}({ins})" + (f" {{{attrs}}}" if attrs else "")
                     + f"  # {node.name}")
    lines.append(f"  return {', '.join(graph.outputs)}")
    return "\n".join(lines)
