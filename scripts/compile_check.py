"""The trainer's own step compiled for a TPU topology on any host: memory, flops, bytes, fit.

    JAX_PLATFORMS=cpu .venv/bin/python scripts/compile_check.py --topology v5e:2x2
    JAX_PLATFORMS=cpu .venv/bin/python scripts/compile_check.py --topology v5e:2x2,v6e:2x2 \\
        --variants maxsquare,iw_multi --fit --eval
    JAX_PLATFORMS=cpu .venv/bin/python scripts/compile_check.py --topology v5e:2x2 \\
        --source 256x512 --target 256x512 --top 20            # a reduced-size proxy
    JAX_PLATFORMS=cpu .venv/bin/python scripts/compile_check.py --topology cpu --source 256x512

What is compiled is what `python -m msjax.train --config gta2city.py:VARIANT` would run: the
config from `configs/gta2city.py` (`--dtype` overrides config.model.dtype, `--set FIELD=VALUE`
any other field), the model for the mesh's platform (`msjax.training.run.model_fields`), the
optimiser `msjax.training.run.build_optimizer` builds, the state as `jax.eval_shape` of its
creation (no weights are initialised, no data is read), and the step
`jit_train_step(make_train_step(...), mesh, adapting=...)`, lowered and compiled with
`.trace(...).lower().compile()`. The batch shapes are the config's training images
(config.source / config.target sizes, or `--source` / `--target`), `--pairs` per chip.

`--topology` names a TPU topology of `jax.experimental.topologies` (v5e:2x2, v6e:2x2, v4:2x2x1,
v5p:2x2x1; libtpu, the `tpu` extra, compiles for it without the hardware) or `cpu` (this
host's devices). Printed per chip (XLA's figures for one device of the SPMD program): memory
by kind, flops and bytes accessed (`compiled.cost_analysis()`), the compile time, and the
roofline floors (flops / peak, bytes / bandwidth) on the chips of `CHIPS`. `--fit` compiles
at 1 and 2 pairs per chip, fits memory = a + b * pairs, predicts the most pairs that fit the
chip's HBM and verifies the prediction with one more compile. `--eval` compiles the
evaluation step too (`msjax.evaluation.inference.make_eval_step`: the `full` protocol,
1024x512 images scored on 2048x1024 labels, with flip). `--top K` lists where the bytes
accessed come from, read off the compiled HLO: by instruction, by kind and by part of the
step (the JAX scope in each instruction's metadata), with the sum set against XLA's total.

Full-size compiles of the full model take minutes and several GB of RAM on a CPU host.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import functools
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

GIB = 2**30

# Peak dense bf16 matmul rate (FLOP/s), HBM bandwidth (bytes/s) and HBM per chip (bytes):
# the vendors' spec sheets, listed with their sources in docs/performance.md.
CHIPS = {
    "v5e": dict(flops=197e12, bandwidth=819e9, hbm=16 * GIB),
    "v4": dict(flops=275e12, bandwidth=1200e9, hbm=32 * GIB),
    "v6e": dict(flops=918e12, bandwidth=1638e9, hbm=32 * GIB),
    "v5p": dict(flops=459e12, bandwidth=2765e9, hbm=95 * GIB),
    "H100": dict(flops=989e12, bandwidth=3.35e12, hbm=80e9),
    "H200": dict(flops=989e12, bandwidth=4.8e12, hbm=141e9),
}
ROOFLINE_CHIPS = ("v5e", "v6e", "H100", "H200")
MEMORY_KINDS = ("arguments", "outputs", "aliased", "temporaries", "generated code")


def parse_hw(text: str) -> tuple[int, int]:
    """'720x1280' -> (720, 1280): height x width."""
    h, w = text.lower().split("x")
    return int(h), int(w)


def stream_hw(stream) -> tuple[int, int]:
    """(height, width) of a training stream's images: its crop, else its prepared WxH size."""
    if stream.crop_size:
        width, height = stream.crop_size
        return int(height), int(width)
    width, height = stream.size.split("x")
    return int(height), int(width)


def load_config(variant: str, dtype: str | None, overrides=()):
    """configs/gta2city.py:VARIANT with config.model.dtype and `FIELD=VALUE` overrides."""
    from msjax import configlib

    config = configlib.load("gta2city", variant)
    if dtype:
        config.model.dtype = dtype
    for item in overrides:
        field, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node = config
        *parents, leaf = field.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def topology_mesh(name: str):
    """A ('data',) mesh over a TPU topology's abstract devices, or this host's CPUs ('cpu')."""
    import jax

    from msjax import sharding

    if name == "cpu":
        return sharding.make_mesh(jax.devices("cpu"))
    from jax.experimental import topologies

    # libtpu takes a machine-wide lock for the TPU chips; compiling for an abstract topology
    # touches no chip, so several compiling processes may share the machine.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = topologies.get_topology_desc(topology_name=name, platform="tpu")
    return sharding.make_mesh(topology.devices)


def chip_of(topology: str) -> str:
    """'v5e:2x2' -> 'v5e' (a key of CHIPS), '' for the CPU."""
    return topology.split(":")[0] if topology != "cpu" else ""


@dataclasses.dataclass
class Compiled:
    """What XLA reports for one device of a compiled program."""

    memory: dict  # MEMORY_KINDS -> bytes
    flops: float
    bytes_accessed: float
    lower_s: float
    compile_s: float
    hlo: str

    @functools.cached_property
    def hbm_traffic(self) -> float:
        """The HBM traffic estimate of `instruction_bytes`, summed."""
        return sum(r["hbm"] for r in instruction_bytes(self.hlo))

    @functools.cached_property
    def estimated_cycles(self) -> int:
        """XLA:TPU's own cycle estimates of the entry computation's instructions, summed
        (the `estimated_cycles` of their backend configs; 0 for other backends)."""
        entry = self.hlo[self.hlo.find("\nENTRY") :]
        return sum(int(c) for c in re.findall(r'"estimated_cycles":"(\d+)"', entry))

    @property
    def total(self) -> int:
        """Bytes the program holds at its peak: arguments, outputs not aliased, temporaries
        and code (the code lives in device memory too)."""
        m = self.memory
        return m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["generated code"]


def _compile(traced) -> Compiled:
    t0 = time.perf_counter()
    lowered = traced.lower()
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    stats = compiled.memory_analysis()
    memory = dict(
        zip(
            MEMORY_KINDS,
            (
                stats.argument_size_in_bytes,
                stats.output_size_in_bytes,
                stats.alias_size_in_bytes,
                stats.temp_size_in_bytes,
                stats.generated_code_size_in_bytes,
            ),
            strict=True,
        )
    )
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # a list of one dict on older jax
        cost = cost[0]
    return Compiled(
        memory=memory,
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        lower_s=t1 - t0,
        compile_s=t2 - t1,
        hlo=compiled.as_text(),
    )


def abstract_run(config, mesh):
    """(model, abstract train state, step function) exactly as the trainer builds them."""
    import jax
    import jax.numpy as jnp

    from msjax import methods, sharding
    from msjax.models import DeepLabV2
    from msjax.training import run
    from msjax.training.step import create_train_state, make_train_step

    method = methods.get(config.method)
    model = DeepLabV2(**run.model_fields(config, sharding.platform(mesh)))
    x = jnp.zeros((1, 33, 33, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    tx = run.build_optimizer(config, model, method, variables["params"]).tx
    state = jax.eval_shape(lambda v: create_train_state(v, tx), variables)
    return model, state, make_train_step(model, tx, method, config.loss)


def compile_train_step(config, mesh, pairs_per_chip: int, source_hw=None, target_hw=None):
    """The trainer's jitted step compiled over `mesh` for `pairs_per_chip` pairs per device.

    Args:
      config: an experiment config (msjax.configlib fields).
      mesh: from `topology_mesh`.
      pairs_per_chip: source+target pairs per device (the global batch is this times the
        device count).
      source_hw, target_hw: image sizes; None for the config's training sizes.

    Returns:
      A Compiled (per-device figures and the compiled HLO text).
    """
    import jax
    import jax.numpy as jnp

    from msjax import methods, sharding
    from msjax.training.step import jit_train_step

    model, state, train_step = abstract_run(config, mesh)
    adapting = methods.get(config.method).adapting
    step = jit_train_step(train_step, mesh, adapting=adapting)
    batch = pairs_per_chip * mesh.devices.size
    sh, sw = source_hw or stream_hw(config.source)
    source = {
        "image": jax.ShapeDtypeStruct((batch, sh, sw, 3), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch, sh, sw), jnp.int32),
    }
    target = None
    if adapting:
        th, tw = target_hw or stream_hw(config.target)
        target = {"image": jax.ShapeDtypeStruct((batch, th, tw, 3), jnp.float32)}
    del model
    sharding.check_global_batch(batch, mesh)
    return _compile(step.trace(state, source, target))


def compile_eval_step(config, mesh, image_hw=(512, 1024), label_hw=(1024, 2048), flip=True):
    """The evaluation step (`inference.make_eval_step`) compiled over `mesh`, one image per
    device: the `full` protocol's image and label sizes, with flip by default."""
    import jax
    import jax.numpy as jnp

    from msjax import sharding
    from msjax.evaluation import inference

    model, state, _ = abstract_run(config, mesh)
    step = inference.make_eval_step(
        model, config.model.num_classes, views=inference.Views(flip=flip)
    )
    repl, split = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    n = mesh.devices.size

    def spec(shape, dtype, where):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=where)

    variables = jax.tree.map(
        lambda x: spec(x.shape, x.dtype, repl),
        {"params": state.params, "batch_stats": state.batch_stats},
    )
    images = spec((n, *image_hw, 3), jnp.float32, split)
    labels = spec((n, *label_hw), jnp.int32, split)
    mask = spec((n,), jnp.bool_, split)
    return _compile(step.trace(variables, images, labels, mask))


# ---- bytes accessed per HLO instruction ---------------------------------------------------

_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
    "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z\d]*)\[([\d,]*)\](?:\{([^}]*)\})?")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
# Instructions that move no data of their own.
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "partition-id", "replica-id", "opt-barrier",
}  # fmt: skip
_CORE_OPS = ("convolution", "dot", "select-and-scatter", "reduce-window", "scatter", "gather",
             "reduce", "sort", "transpose", "copy", "pad", "slice", "concatenate")  # fmt: skip


def array_bytes(dtype: str, dims: list[int], layout: str | None) -> float:
    """Bytes of one array as the device stores it: dimensions padded to the layout's tile."""
    if dtype not in _DTYPE_BYTES:
        return 0.0
    dims = list(dims)
    if layout and ":" in layout:
        order = [int(d) for d in layout.split(":")[0].split(",") if d]
        tile = re.search(r"T\(([\d,]+)\)", layout)
        if tile:
            sizes = [int(t) for t in tile[1].split(",")]
            padded = dims + [1] * max(0, len(sizes) - len(order))
            axes = order + list(range(len(dims), len(padded)))
            for size, axis in zip(reversed(sizes), axes, strict=False):
                padded[axis] = -(-padded[axis] // size) * size
            dims = padded
    count = 1
    for d in dims:
        count *= d
    return count * _DTYPE_BYTES[dtype]


def memory_space(layout: str | None) -> str:
    """'HBM', or 'on-chip' for an array XLA:TPU placed in another memory space (S(n), the
    vector memory VMEM and the like)."""
    space = re.search(r"S\((\d+)\)", layout or "")
    return "HBM" if not space or space[1] == "0" else "on-chip"


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape string (a tuple counts its arrays; u32[] sync flags are tiny)."""
    return sum(
        array_bytes(dt, [int(d) for d in dims.split(",") if d], layout)
        for dt, dims, layout in _ARRAY.findall(shape)
    )


def tuple_elements(shape: str) -> list[str]:
    """The top-level elements of a tuple shape string ('(a, (b, c), d)' -> ['a', '(b, c)', 'd'])."""
    inner, parts, depth, start = shape.strip()[1:-1], [], 0, 0
    for i, ch in enumerate(inner):
        depth += {"(": 1, "{": 1, "[": 1, ")": -1, "}": -1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    return [*parts, inner[start:].strip()]


def _split_shape(rest: str) -> tuple[str, str]:
    """'shape opcode(...)...' -> (shape, 'opcode(...)...'), tuple shapes included."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def _operands(call: str) -> tuple[str, list[str]]:
    """'fusion(%a, %b), kind=...' -> ('fusion', ['a', 'b'])."""
    op, _, args = call.partition("(")
    depth = 1
    for i, ch in enumerate(args):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return op.strip(), re.findall(r"%([\w.\-]+)", args[:i])
    return op.strip(), re.findall(r"%([\w.\-]+)", args)


def parse_hlo(text: str) -> dict[str, dict]:
    """{computation: {instruction: {'shape', 'op', 'operands', 'attrs'}}} of HLO text;
    the entry computation is under 'ENTRY'."""
    computations, current = {}, None
    for line in text.splitlines():
        if not line.startswith(" ") and line.rstrip().endswith("{"):  # a computation
            m = _COMPUTATION.match(line)
            current = "ENTRY" if line.startswith("ENTRY") else (m["name"] if m else None)
            computations[current] = {}
            continue
        if line.startswith("}"):
            current = None
        m = _INSTRUCTION.match(line) if current is not None else None
        if m:
            shape, call = _split_shape(m["rest"])
            op, operands = _operands(call)
            ins = dict(shape=shape, op=op, operands=operands, attrs=call)
            ins["root"] = line.lstrip().startswith("ROOT")
            computations[current][m["name"]] = ins
    return computations


def _fused_operand_bytes(computations: dict, fused: dict, index: int, full: float) -> float:
    """Bytes a fusion reads of its operand `index`, by XLA's rule (`HloCostAnalysis::
    FusionParameterReadBytes`): a slice reads what it keeps, each broadcast or reshape of the
    parameter reads it again, a nested fusion reads what its own parameter reads, and all
    other users share one read."""
    wanted = f"parameter({index})"
    param = next(
        (n for n, i in fused.items() if i["op"] == "parameter" and wanted in i["attrs"]), None
    )
    if param is None:
        return full
    size, shared = 0.0, False
    for user_name, user in fused.items():
        if param not in user["operands"]:
            continue
        op = user["op"]
        if op == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", user["attrs"])
            nested = computations.get(called[1], {}) if called else {}
            if any(user_name in i["operands"] for i in fused.values()):  # XLA: 0 at the root
                for i, operand in enumerate(user["operands"]):
                    if operand == param:
                        size += _fused_operand_bytes(computations, nested, i, full)
        elif op == "gather" and user["operands"][0] == param:
            size += _gather_read_bytes(fused[param]["shape"], user["shape"])
        elif op == "slice" or (op == "dynamic-slice" and user["operands"][0] == param):
            size += shape_bytes(user["shape"])
        elif op in ("broadcast", "reshape"):
            size += full
        elif op == "dynamic-update-slice" and user["operands"][0] == param:
            continue  # updated in place
        elif not shared:
            shared = True
            size += full
    return size


def _gather_read_bytes(operand: str, output: str) -> float:
    """What XLA:TPU's cost model charges a fused gather for its operand: one stored tile of
    the operand per gathered element (measured against `cost_analysis`, see
    docs/performance.md), so a gather of scattered elements costs far more than its size."""
    m = _ARRAY.search(operand)
    dtype, layout = m[1], m[3] or ""
    tile = re.search(r"T\(([\d,]+)\)", layout)
    tile_elements = 1
    for t in tile[1].split(",") if tile else ():
        tile_elements *= int(t)
    out = _ARRAY.search(output)
    count = 1
    for d in (int(x) for x in out[2].split(",") if x):
        count *= d
    return count * tile_elements * _DTYPE_BYTES.get(dtype, 4)


def _fused_output_bytes(fused: dict, full: float) -> float:
    """Bytes a fusion writes: only the update when its root updates a slice in place."""
    root = next((i for i in fused.values() if i.get("root")), None)
    if root and root["op"] == "dynamic-update-slice":
        update = fused.get(root["operands"][1])
        return shape_bytes(update["shape"]) if update else full
    return full


def _core_op(fused: dict) -> str:
    ops = {i["op"] for i in fused.values()}
    return next((op for op in _CORE_OPS if op in ops), "elementwise")


def _arrays(shape: str, scale: float = 1.0):
    """(dtype, bytes, memory space) of each array of an HLO shape string."""
    for dt, dims, layout in _ARRAY.findall(shape):
        size = array_bytes(dt, [int(d) for d in dims.split(",") if d], layout) * scale
        yield dt, size, memory_space(layout)


def _slice_start_bytes(ins: dict, operands: list[str]) -> tuple[list, float]:
    """(bytes XLA counts, HBM traffic) of a slice-start ((operand), slice, sync), which
    reads and writes the slice once."""
    piece = tuple_elements(ins["shape"])[1]
    read = next(_arrays(piece), ("", 0.0, "HBM"))[1]
    hbm = read * (memory_space(operands[0]) == "HBM")
    hbm += sum(b for _, b, sp in _arrays(piece) if sp == "HBM")
    return list(_arrays(piece, 2.0)), hbm


def _computed_bytes(computations: dict, ins: dict, operands: list[str]) -> tuple:
    """(bytes XLA counts, HBM traffic or None, kind) of an instruction other than a slice
    or slice-start: its output and operands, a fusion's at what its fused computation
    writes and reads. Bytes are (dtype, bytes, memory space) triples."""
    op, attrs = ins["op"], ins["attrs"]
    called = re.search(r"calls=%?([\w.\-]+)", attrs)
    fused = computations.get(called[1], {}) if called and op == "fusion" else {}
    full = shape_bytes(ins["shape"])
    moved = list(
        _arrays(ins["shape"], _fused_output_bytes(fused, full) / full if fused and full else 1.0)
    )
    for i, shape in enumerate(operands):
        if shape.startswith("("):  # a tuple operand is a table of pointers
            continue
        full = shape_bytes(shape)
        part = _fused_operand_bytes(computations, fused, i, full) if fused else full
        moved += _arrays(shape, part / full if full else 0.0)
    hbm = None  # the HBM part of `moved`, unless the instruction moves data between memories
    if op == "copy-start":  # (destination, source, sync): read the source once
        dest = tuple_elements(ins["shape"])[0]
        hbm = sum(b for _, b, sp in [*_arrays(operands[0]), *_arrays(dest)] if sp == "HBM")
    elif op.endswith("-done"):
        hbm = 0.0  # the move was counted at its start
    kind = op
    if op == "fusion":
        fusion_kind = re.search(r"kind=(k\w+)", attrs)
        kind = f"fusion {fusion_kind[1] if fusion_kind else ''} ({_core_op(fused)})"
    target = re.search(r'custom_call_target="([^"]+)"', attrs)
    return moved, hbm, target[1] if target else kind


def instruction_bytes(text: str) -> list[dict]:
    """Per instruction of the entry computation: the bytes XLA's cost model counts for it
    (operands plus outputs at their stored, tile-padded sizes; a slice reads only what it
    keeps, a fusion what its fused computation reads), and an estimate of its HBM traffic.

    XLA:TPU's count includes the on-chip memories: an asynchronous copy into or out of them
    counts its operand and both ends of the copy, and the instruction that then reads the
    copy counts it again. `hbm` counts only the arrays in HBM, and each copy or slice
    between memories once, at its HBM end.

    Returns:
      [{'name', 'kind', 'bytes', 'hbm', 'shape', 'scope', 'dtypes': {dtype: bytes},
        'spaces': {memory space: bytes}}].
    """
    computations = parse_hlo(text)
    entry = computations.get("ENTRY", {})
    users = collections.defaultdict(list)
    for name, ins in entry.items():
        for operand in ins["operands"]:
            users[operand].append(name)
    rows = []
    for name, ins in entry.items():
        op = ins["op"]
        if op in _FREE or 'custom_call_target="ConcatBitcast"' in ins["attrs"]:
            continue  # ConcatBitcast reinterprets the slices it joins: no bytes
        operands = [entry[o]["shape"] if o in entry else "()" for o in ins["operands"]]
        if op == "slice":
            moved, hbm, kind = list(_arrays(ins["shape"], 2.0)), None, op
        elif op == "slice-start":
            (moved, hbm), kind = _slice_start_bytes(ins, operands), op
        else:
            moved, hbm, kind = _computed_bytes(computations, ins, operands)
        dtypes, spaces = collections.Counter(), collections.Counter()
        for dt, size, space in moved:
            dtypes[dt] += size
            spaces[space] += size
        rows.append(
            dict(
                name=name,
                kind=kind,
                bytes=sum(dtypes.values()),
                hbm=spaces["HBM"] if hbm is None else hbm,
                shape=ins["shape"],
                scope=_scope(entry, users, name),
                dtypes=dict(dtypes),
                spaces=dict(spaces),
            )
        )
    return rows


def _op_name(ins: dict) -> str:
    scope = re.search(r'op_name="((?:[^"\\]|\\.)*)"', ins["attrs"])
    return scope[1] if scope and "/" in scope[1] else ""


def _scope(entry: dict, users: dict, name: str) -> str:
    """The JAX scope of an instruction; for the copies and slices XLA adds without one
    (moves between memories), the scope of the first instruction that uses what they move."""
    seen, frontier = set(), [name]
    while frontier and len(seen) < 64:
        current = frontier.pop(0)
        if current in seen or current not in entry:
            continue
        seen.add(current)
        scope = _op_name(entry[current])
        if scope:
            return scope
        frontier += users.get(current, [])
    return ""


def bytes_tables(compiled: Compiled, top: int) -> str:
    """Markdown tables of where the bytes accessed come from (instruction, kind, part, dtype)."""
    from trace_summary import part_of_step

    rows = instruction_bytes(compiled.hlo)
    total = sum(r["bytes"] for r in rows) or 1.0
    lines = [
        f"Bytes accessed per chip, summed over the {len(rows)} instructions of the compiled "
        f"HLO: {total:.3e}; XLA's cost analysis: {compiled.bytes_accessed:.3e} (the sum is "
        f"{total / compiled.bytes_accessed:.3f} of it).",
        "",
        "| # | instruction | kind | GB | share | shape | scope |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(sorted(rows, key=lambda r: -r["bytes"])[:top], 1):
        scope = r["scope"].replace("jit(train_step)/", "").replace("jit(step)/", "")
        scope = scope if len(scope) <= 80 else "..." + scope[-77:]
        shape = re.sub(r"\{[^}]*\}", "", r["shape"])
        shape = shape if len(shape) <= 40 else shape[:37] + "..."
        lines.append(
            f"| {i} | {r['name']} | {r['kind']} | {r['bytes'] / 1e9:.3f} "
            f"| {100 * r['bytes'] / total:.1f}% | {shape} | {scope} |"
        )

    def grouped(title: str, key) -> list[str]:
        sums = collections.Counter()
        for r in rows:
            for k, b in key(r):
                sums[k] += b
        out = ["", f"| {title} | GB | share |", "|---|---|---|"]
        for k, b in sums.most_common(top):
            out.append(f"| {k} | {b / 1e9:.3f} | {100 * b / total:.1f}% |")
        return out

    lines += grouped("kind", lambda r: [(r["kind"], r["bytes"])])
    lines += grouped("part of the step", lambda r: [(part_of_step(r["scope"]), r["bytes"])])
    lines += grouped("element type", lambda r: r["dtypes"].items())
    lines += grouped("memory space", lambda r: r["spaces"].items())
    return "\n".join(lines)


# ---- tables -------------------------------------------------------------------------------


def memory_row(label: str, c: Compiled, hbm: float | None) -> str:
    fits = "" if hbm is None else (" yes" if c.total <= hbm else " **no**")
    kinds = " | ".join(f"{c.memory[k] / GIB:.2f}" for k in MEMORY_KINDS)
    return (
        f"| {label} | {kinds} | {c.total / GIB:.2f}{fits} | {c.flops:.3e} | "
        f"{c.bytes_accessed:.3e} | {c.hbm_traffic:.3e} | {c.estimated_cycles / 1e6:.1f} | "
        f"{c.lower_s:.0f} + {c.compile_s:.0f} |"
    )


MEMORY_HEADER = [
    "| program | " + " | ".join(f"{k} GiB" for k in MEMORY_KINDS)
    + " | total GiB (fits HBM) | flops | bytes accessed (XLA) | HBM traffic (estimate) "
    "| XLA:TPU estimated Mcycles | lower + compile s |",
    "|---|" + "---|" * (len(MEMORY_KINDS) + 6),
]  # fmt: skip


def roofline_rows(label: str, c: Compiled) -> list[str]:
    cells = []
    for chip in ROOFLINE_CHIPS:
        spec = CHIPS[chip]
        compute = c.flops / spec["flops"] * 1e3
        traffic = c.bytes_accessed / spec["bandwidth"] * 1e3
        hbm = c.hbm_traffic / spec["bandwidth"] * 1e3
        cells.append(f"{compute:.1f} / {traffic:.1f} / {hbm:.1f}")
    return [f"| {label} | " + " | ".join(cells) + " |"]


ROOFLINE_HEADER = [
    "| program | "
    + " | ".join(f"{c} ms: compute / bytes accessed / HBM est." for c in ROOFLINE_CHIPS)
    + " |",
    "|---|" + "---|" * len(ROOFLINE_CHIPS),
]


def fit_pairs(compile_at, hbm: float, log) -> tuple[int, dict]:
    """The most pairs per chip whose program fits `hbm`: fit a + b*n at n = 1, 2, predict,
    verify by compiling at the prediction (and below it until one fits).

    Returns:
      (pairs that fit, {pairs: Compiled} of every compile made).
    """
    runs = {n: compile_at(n) for n in (1, 2)}
    for n in (1, 2):
        log(f"  {n} pair(s) per chip: {runs[n].total / GIB:.2f} GiB")
    slope = runs[2].total - runs[1].total
    intercept = runs[1].total - slope
    if runs[1].total > hbm:
        return 0, runs
    predicted = max(1, int((hbm - intercept) // slope)) if slope > 0 else 64
    log(
        f"  fit: {intercept / GIB:.2f} GiB + {slope / GIB:.2f} GiB x pairs; predicted "
        f"{predicted} pairs in {hbm / GIB:.0f} GiB"
    )
    n = predicted
    while n >= 1:
        if n not in runs:
            runs[n] = compile_at(n)
            log(f"  verify {n} pairs per chip: {runs[n].total / GIB:.2f} GiB")
        if runs[n].total <= hbm:
            return n, runs
        n -= 1
    return 0, runs


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--topology", default="v5e:2x2", help="comma-separated, or 'cpu'")
    p.add_argument("--variants", default="maxsquare", help="configs/gta2city.py arguments")
    p.add_argument("--dtype", default="bfloat16", help="config.model.dtype ('' keeps it)")
    p.add_argument("--pairs", type=int, default=1, help="pairs per chip (without --fit)")
    p.add_argument("--source", type=parse_hw, help="HxW source images (default: the config's)")
    p.add_argument("--target", type=parse_hw, help="HxW target images (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a config override, e.g. model.remat=True (repeatable)")  # fmt: skip
    p.add_argument("--fit", action="store_true", help="the most pairs per chip that fit HBM")
    p.add_argument("--eval", action="store_true", help="also the evaluation step")
    p.add_argument("--top", type=int, default=0, help="where the bytes come from (K rows)")
    p.add_argument("--hlo-dir", help="write each compiled program's HLO text here")
    return p.parse_args(argv)


def log(text: str) -> None:
    print(text, flush=True)


def versions() -> str:
    """'jax X, jaxlib Y[, libtpu Z]'."""
    import jax
    import jaxlib

    text = f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"
    try:
        from importlib.metadata import version

        text += f", libtpu {version('libtpu')}"
    except Exception:  # noqa: BLE001 (libtpu absent: a CPU-only check)
        pass
    return text


@dataclasses.dataclass
class Tables:
    """The rows of the printed tables, gathered over topologies and variants."""

    memory: list = dataclasses.field(default_factory=list)
    roofline: list = dataclasses.field(default_factory=list)
    fit: list = dataclasses.field(default_factory=list)
    bytes: list = dataclasses.field(default_factory=list)


def check_variant(args, topology: str, mesh, hbm, variant: str, tables: Tables) -> None:
    """Compiles one config's train step on one topology (at --pairs, or fitted) into tables."""
    config = load_config(variant, args.dtype or None, args.set)
    sizes = (args.source or stream_hw(config.source), args.target or stream_hw(config.target))
    what = (
        f"{topology} {variant} {config.model.dtype}, source {sizes[0][0]}x{sizes[0][1]}"
        f" + target {sizes[1][0]}x{sizes[1][1]}"
    )

    def compile_at(n):
        log(f"compiling {what}, {n} pair(s) per chip ...")
        c = compile_train_step(config, mesh, n, *sizes)
        if args.hlo_dir:
            name = f"{what.split(',')[0].replace(' ', '_').replace(':', '-')}_{n}.hlo"
            Path(args.hlo_dir).mkdir(parents=True, exist_ok=True)
            Path(args.hlo_dir, name).write_text(c.hlo)
        return c

    if args.fit and hbm is not None:
        best, runs = fit_pairs(compile_at, hbm, log)
        compiled = ", ".join(f"{n}: {c.total / GIB:.2f}" for n, c in sorted(runs.items()))
        tables.fit.append(f"| {what} | {hbm / GIB:.0f} | {best} | {compiled} |")
    else:
        runs = {args.pairs: compile_at(args.pairs)}
    for n, c in sorted(runs.items()):
        tables.memory.append(memory_row(f"train {what}, {n}/chip", c, hbm))
        tables.roofline += roofline_rows(f"train {what}, {n}/chip", c)
    if args.top:
        tables.bytes.append(f"### Bytes accessed: {what}, {min(runs)}/chip\n")
        tables.bytes.append(bytes_tables(runs[min(runs)], args.top))


def check_eval(args, topology: str, mesh, hbm, tables: Tables) -> None:
    """Compiles the evaluation step (the `full` protocol, flip) on one topology into tables."""
    config = load_config(args.variants.split(",")[0], args.dtype or None, args.set)
    log(f"compiling the evaluation step for {topology} ...")
    c = compile_eval_step(config, mesh)
    label = f"eval {topology} {config.model.dtype}, 512x1024 -> 1024x2048, flip, 1/chip"
    tables.memory.append(memory_row(label, c, hbm))
    tables.roofline += roofline_rows(label, c)


def print_tables(tables: Tables) -> None:
    log("\n## Per chip\n")
    log("\n".join(MEMORY_HEADER + tables.memory))
    log("\n## Roofline floors (XLA's flops and bytes per chip over each chip's peaks)\n")
    log("\n".join(ROOFLINE_HEADER + tables.roofline))
    if tables.fit:
        log("\n## Pairs per chip that fit HBM (predicted from 1 and 2, verified by compiling)\n")
        log("| program | HBM GiB | most pairs per chip | GiB at each compiled pairs |")
        log("|---|---|---|---|")
        log("\n".join(tables.fit))
    if tables.bytes:
        log("")
        log("\n\n".join(tables.bytes))


def main(argv=None) -> None:
    args = parse_args(argv)
    log(f"# compile_check ({versions()}, {time.strftime('%Y-%m-%d')})")
    tables = Tables()
    for topology in args.topology.split(","):
        mesh = topology_mesh(topology)
        chip = chip_of(topology)
        hbm = CHIPS[chip]["hbm"] if chip in CHIPS else None
        for variant in args.variants.split(","):
            check_variant(args, topology, mesh, hbm, variant, tables)
        if args.eval:
            check_eval(args, topology, mesh, hbm, tables)
    print_tables(tables)


if __name__ == "__main__":
    main()
