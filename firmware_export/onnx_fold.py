"""Static shapes and constant folding for the QDQ ONNX importer.

Exporters compute reshape targets, pads and resize scales at run time (``Shape -> Gather ->
Div -> Concat -> Reshape``); firmware needs them as constants. :func:`fold_and_infer` alternates
ONNX shape inference with folding of those small integer subgraphs (evaluated by onnx's reference
evaluator) until nothing changes, so every tensor gets a static shape.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgesmith.errors import ExportError

#: helper ops folded when all their inputs are constant (shape arithmetic, constant pads, scales)
FOLDABLE = {"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Mul",
            "Add", "Sub", "Div", "Reshape", "ConstantOfShape", "Range", "Identity", "Expand", "Floor",
            "Ceil", "Equal", "Where", "Neg", "Abs", "Max", "Min", "ReduceProd", "Size", "Transpose"}
#: float constants larger than this are never computed at import time (they would be model maths)
_MAX_FLOAT_FOLD = 64
_MAX_ROUNDS = 8


def infer(model: onnx.ModelProto, name: str):
    """Shape inference; returns (model, static shapes by tensor name, element types by name)."""
    try:
        model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference raises several exception types
        raise ExportError(f"ONNX shape inference failed on {name!r}: {exc}; check the model with "
                          f"onnx.checker.check_model") from None
    shapes: dict[str, tuple[int, ...]] = {}
    elem_types: dict[str, int] = {}
    g = model.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        elem_types[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
    return model, shapes, elem_types


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(attr), np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(attr), np.int64)
    return None


def _evaluate(node: onnx.NodeProto, consts: dict, shapes: dict, opsets) -> list | None:
    if node.op_type == "Constant":
        value = constant_value(node)
        return None if value is None else [value]
    if node.op_type == "Shape":
        if node.input[0] not in shapes:
            return None
        shp = np.array(shapes[node.input[0]], np.int64)
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), len(shp))
        return [shp[start:end]]
    ins = {i: consts.get(i) for i in node.input if i}
    if any(v is None for v in ins.values()):
        return None
    if node.op_type == "Identity":  # a shared weight under a second name: any size
        return [ins[node.input[0]]]
    if any(v.dtype.kind == "f" and v.size > _MAX_FLOAT_FOLD for v in ins.values()):
        return None
    from onnx.reference import ReferenceEvaluator  # only needed for shape arithmetic

    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for i, v in ins.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o])
    try:
        evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets))
        return [np.asarray(r) for r in evaluator.run(None, ins)]
    except Exception:  # not foldable after all: the converter that needs it reports it
        return None


def fold_and_infer(model: onnx.ModelProto, name: str):
    """Fold constant helper subgraphs into initializers and infer static shapes (in place)."""
    opsets = list(model.opset_import)
    outputs = {o.name for o in model.graph.output}
    for _ in range(_MAX_ROUNDS):
        model, shapes, elem_types = infer(model, name)
        g = model.graph
        consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        keep, new_inits = [], []
        for node in g.node:
            outs = [o for o in node.output if o]
            values = None
            if node.domain in ("", "ai.onnx") and node.op_type in FOLDABLE and not set(outs) & outputs:
                values = _evaluate(node, consts, shapes, opsets)
            if values is None:
                keep.append(node)
                continue
            for o, v in zip(outs, values):
                consts[o] = v
                new_inits.append(numpy_helper.from_array(np.asarray(v), o))
        if not new_inits:
            return model, shapes, elem_types
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(new_inits)
        del g.value_info[:]
    return infer(model, name)
