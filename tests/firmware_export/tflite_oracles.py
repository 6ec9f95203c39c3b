"""Run a ``.tflite`` in the two independent oracles: LiteRT and TFLite Micro (plain test helper).

``run_litert(model, inputs, reference=True)`` uses LiteRT's reference kernels
(``OpResolverType.BUILTIN_REF``); ``reference=False`` its default optimized kernels.
``run_tflm(model, graph_inputs, graph_outputs, inputs)`` runs the tflite-micro Python interpreter.
Both take ``inputs`` as ``{tensor name: array}`` and return ``{tensor name: array}``.
"""
from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tflite_micro import runtime as tflm


def run_litert(model: bytes, inputs: dict[str, np.ndarray], reference: bool = True) -> dict[str, np.ndarray]:
    kind = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    it = Interpreter(model_content=model, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], inputs[d["name"]])
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]).copy() for d in it.get_output_details()}


def run_tflm(model: bytes, input_names, output_names, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    it = tflm.Interpreter.from_bytes(model)
    for i, name in enumerate(input_names):
        it.set_input(inputs[name], i)
    it.invoke()
    return {name: np.array(it.get_output(i)) for i, name in enumerate(output_names)}
