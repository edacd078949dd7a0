"""float16 conversion of an exported float32 ONNX graph (``export_onnx --fp16``), schema-driven and in place.

Weights and most arithmetic go to float16; what drifts or overflows first stays float32: normalisation, attention
scores and softmax, the Sin/Cos of the time embedding and every constant sub-graph. Graph IO stays float32, so the
runtime feeds and reads the same tensors at either precision.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = 65504.0


@dataclasses.dataclass
class Fp16Report:
    fp16_nodes: int = 0
    fp32_nodes: Counter = dataclasses.field(default_factory=Counter)  # reason → count
    casts: int = 0
    converted_weights: int = 0
    clamped_values: int = 0

    def summary(self) -> str:
        kept = ", ".join(f"{n} {reason}" for reason, n in sorted(self.fp32_nodes.items())) or "none"
        return (f"{self.fp16_nodes} nodes in float16; kept in float32: {kept}; {self.casts} Cast nodes inserted; "
                f"{self.converted_weights} weight tensors converted ({self.clamped_values} values clamped to ±{FP16_MAX:g})")


# Normalisation statistics and softmax are where float16 drifts or overflows first (docs/design.md, "Export: ONNX and TensorRT": SD2 attention
# overflows in fp16); Sin/Cos take arguments up to ~1000 (t = 999) that float16 cannot resolve.
_FP32_OPS = {"InstanceNormalization": "normalisation", "LayerNormalization": "normalisation",
             "GroupNormalization": "normalisation", "BatchNormalization": "normalisation",
             "Softmax": "attention softmax", "Sin": "time embedding", "Cos": "time embedding"}
# Ops whose float input does not bind their output type; they are left exactly as they are.
_PASS_THROUGH = {"Cast", "CastLike", "Shape", "Size"}
# Between an attention score MatMul and its Softmax (scale, mask).
_SCORE_OPS = {"Mul", "Div", "Add", "Sub", "Where", "Identity", "Cast"}
# After a lowered GroupNorm's InstanceNormalization: reshape back and apply γ, β (torch's GroupNorm includes them).
_NORM_TAIL_OPS = ("Reshape", "Mul", "Add")


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=17)


def _infer_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, via onnx shape inference on a weight-free skeleton (no 2 GiB limit): the
    initializers become typed graph inputs, which is all type inference needs."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    g = skeleton.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    declared = {v.name for v in g.input}
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in model.graph.initializer if t.name not in declared)
    types = {t.name: t.data_type for t in model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    keep = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and value.data_type == TensorProto.FLOAT and len(node.attribute) == 1:
            t = TensorProto()
            t.CopyFrom(value)
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


# Pure data movement: in a constant sub-graph these only re-arrange weights, so they follow their inputs.
_DATA_MOVEMENT = {"Identity", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Concat", "Slice", "Gather",
                  "Expand", "Tile", "Split"}


def _fp32_reasons(graph: onnx.GraphProto, types: dict[str, int]) -> dict[int, str]:
    """Index of each node that must compute in float32 → why."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in n.input:
            consumers.setdefault(x, []).append(i)
    reasons: dict[int, str] = {}
    # Constant sub-graphs (values that do not depend on the graph inputs, e.g. the time embedding of t = 999 and the
    # K/V projections of the constant text context in a dynamic-shape export): exact and nearly free in float32.
    # Shape/Size cut the dependency: they read the input's shape, not its values.
    data_dep = {v.name for v in graph.input}
    fp32_const: set[str] = set()
    for i, n in enumerate(nodes):
        if n.op_type not in ("Shape", "Size") and any(x in data_dep for x in n.input):
            data_dep.update(o for o in n.output if o)
        elif n.op_type not in _DATA_MOVEMENT or any(x in fp32_const for x in n.input):
            reasons[i] = "constant sub-graph"
            fp32_const.update(o for o in n.output if types.get(o) == TensorProto.FLOAT)
    for i, n in enumerate(nodes):
        if n.op_type in _FP32_OPS:
            reasons[i] = _FP32_OPS[n.op_type]
        if n.op_type == "Softmax":
            # Back to the Q·Kᵀ MatMul through scale/mask ops, following the data-dependent operand.
            t, steps = n.input[0], 0
            while t in producer and steps < 6:
                j = producer[t]
                p = nodes[j]
                if p.op_type == "MatMul":
                    reasons[j] = "attention scores"
                    break
                if p.op_type not in _SCORE_OPS:
                    break
                reasons[j] = "attention scores"
                t = next((x for x in p.input if x in data_dep), p.input[0])
                steps += 1
            # Forward to the attention-weighted sum (softmax · V).
            for j in consumers.get(n.output[0], []):
                if nodes[j].op_type == "MatMul":
                    reasons[j] = "attention scores"
        if n.op_type == "InstanceNormalization":
            t = n.output[0]
            for op in _NORM_TAIL_OPS:
                users = consumers.get(t, [])
                if len(users) != 1 or nodes[users[0]].op_type != op:
                    break
                reasons[users[0]] = "normalisation"
                t = nodes[users[0]].output[0]
    return reasons


def convert_to_fp16(model: onnx.ModelProto) -> Fp16Report:
    """Convert ``model`` (float32, in place) to float16 weights and arithmetic, keeping graph IO float32.

    Kept in float32: normalisation (Instance/Layer/GroupNormalization, and the γ/β tail of a lowered GroupNorm),
    attention scores (the Q·Kᵀ MatMul, its scale/mask ops, Softmax and the softmax·V MatMul), Sin/Cos, and the
    arithmetic of every sub-graph that does not depend on the inputs. This matches the torch backend's
    reduced-precision policy (``seg_node.models.sd``/``mae``: attention and norms in float32). Which operands of a
    node change type follows the op's ONNX schema: the inputs that share a float type variable with its outputs
    (so e.g. Resize's ``scales`` stays float32). A weight read by float16 nodes gets a float16 copy (values clamped
    to ±65504); Cast nodes join the float16 and float32 regions. Graphs with sub-graphs (If/Loop/Scan) are
    rejected (gen2seg graphs have none).
    """
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ValueError("fp16 conversion does not support graphs with sub-graphs (If/Loop/Scan)")
    _constants_to_initializers(graph)
    orig = _infer_types(model)
    opset = _opset(model)
    reasons = _fp32_reasons(graph, orig)
    report = Fp16Report()
    inits = {t.name: t for t in graph.initializer}
    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    cur: dict[str, int] = {v.name: orig.get(v.name, 0) for v in graph.input}
    cur.update({name: t.data_type for name, t in inits.items()})
    casts: dict[tuple[str, int], str] = {}
    half_inits: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def as_type(name: str, target: int) -> str:
        if cur.get(name) == target:
            return name
        if name in inits and target == F16 and cur.get(name) == F32:
            if name not in half_inits:
                arr = numpy_helper.to_array(inits[name])
                report.clamped_values += int(np.count_nonzero(np.abs(arr) > FP16_MAX))
                half = numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), name + "__fp16")
                graph.initializer.append(half)
                half_inits[name] = half.name
                cur[half.name] = F16
                report.converted_weights += 1
            return half_inits[name]
        key = (name, target)
        if key not in casts:
            out = f"{name}__to_{'fp16' if target == F16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=target, name=f"{out}__cast"))
            cur[out] = target
            casts[key] = out
            report.casts += 1
        return casts[key]

    def formal(params: Sequence[onnx.defs.OpSchema.FormalParameter], i: int) -> str:
        # The last formal parameter of a variadic op repeats.
        return params[min(i, len(params) - 1)].type_str if params else ""

    for index, original in enumerate(graph.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        handled_in: set[int] = set()
        typed_out: set[int] = set()
        if node.op_type not in _PASS_THROUGH and node.domain in ("", "ai.onnx"):
            schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
            allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
            groups: dict[str, tuple[list[int], list[int]]] = {}
            for i, x in enumerate(node.input):
                if x:
                    groups.setdefault(formal(schema.inputs, i), ([], []))[0].append(i)
            for i, y in enumerate(node.output):
                if y:
                    groups.setdefault(formal(schema.outputs, i), ([], []))[1].append(i)
            float_groups = [(tv, ins, outs) for tv, (ins, outs) in groups.items()
                            if tv in allowed and ins and any(orig.get(node.input[i]) == F32 for i in ins)]
            if float_groups:
                target = F32 if index in reasons else F16
                if target == F16 and any("tensor(float16)" not in allowed[tv] for tv, _, _ in float_groups):
                    target, reasons[index] = F32, "no float16 in the op schema"
                for _, ins, outs in float_groups:
                    for i in ins:
                        node.input[i] = as_type(node.input[i], target)
                        handled_in.add(i)
                    for i in outs:
                        cur[node.output[i]] = target
                        typed_out.add(i)
                if target == F16:
                    report.fp16_nodes += 1
                else:
                    report.fp32_nodes[reasons[index]] += 1
        if node.op_type not in _PASS_THROUGH:
            # Any other float operand (a concrete tensor(float) parameter, or an op left as it is) reads float32.
            for i, x in enumerate(node.input):
                if x and i not in handled_in and orig.get(x) == F32 and cur.get(x) == F16:
                    node.input[i] = as_type(x, F32)
        for i, y in enumerate(node.output):
            if y and i not in typed_out:
                cur[y] = orig.get(y, 0)
        new_nodes.append(node)

    # Graph outputs keep their float32 type: the last producer writes "<name>__fp16", a Cast restores the name.
    for out in graph.output:
        if cur.get(out.name) == F16:
            inner = out.name + "__fp16"
            for n in new_nodes:
                for field in (n.input, n.output):
                    renamed = [inner if x == out.name else x for x in field]
                    del field[:]
                    field.extend(renamed)
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=F32, name=f"{out.name}__cast"))
            report.casts += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {x for n in graph.node for x in n.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
    # Intermediate value_info carried float32 types; the runtimes re-infer them.
    del graph.value_info[:]
    return report
