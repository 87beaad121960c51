"""Reading ONNX graphs: operator counts and the inputs a graph takes (no ONNX Runtime needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in m.graph.node))


def graph_inputs(path: Path) -> list[str]:
    """Names of the graph inputs that are not initializers, in graph order."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in init]


def graph_outputs(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
