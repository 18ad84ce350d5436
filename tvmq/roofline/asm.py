"""Assembly side of the roofline: MACs of an instruction, functions, loops, the hot loop.

Reads the text LLVM prints for an aarch64 or armv7 module (``inspect_source("asm")``): a
function runs from its label to ``.Lfunc_end``; a TVM kernel is its ``*_compute_`` function
plus the ``.L__tvm_parallel_lambda*`` bodies it launches; a loop is a label and a later
branch back to it, innermost when it holds no other loop.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import re
from typing import Any

_LANES = {"16b": 16, "8b": 8, "8h": 8, "4h": 4, "4s": 4, "2s": 2, "2d": 2, "1d": 1}
_A64_WIDENING = re.compile(r"^[su](mull|mlal|mlsl)2?$")
_A64_DOT = re.compile(r"^(s|u|us|su)dot$")
_A64_VEC_MUL = re.compile(r"^(mul|mla|mls)$")
_A64_SCALAR_MUL = re.compile(r"^(madd|msub|mul|mneg)$")
_A32_NEON_MUL = re.compile(r"^v(mull|mlal|mlsl|mla|mls|mul)\.[a-z]*(8|16|32)$")
_A32_NEON_DOT = re.compile(r"^v(s|u)dot\.[su]8$")
_A32_SCALAR_2 = re.compile(r"^(smlad|smladx|smuad|smuadx|smlsd|smlsdx|smusd|smusdx)$")
_A32_SCALAR_16 = re.compile(r"^(smla[bt][bt]|smul[bt][bt]|smlaw[bt]|smulw[bt])$")
_A32_SCALAR_32 = re.compile(r"^(mla|mls|mul)s?$")
_BRANCH = re.compile(r"^(b(\.?(eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al))?|"
                     r"cbn?z|tbn?z)(\.w|\.n)?$")
#: instructions whose result holds 8/16-bit data: byte/halfword loads, sign/zero extends,
#: NEON widening (the inputs of an int8 MAC done in wider lanes)
_NARROW_DEF = re.compile(r"^(ldu?rs?[bh]|[su]xt[bh]|[su]xtl2?|[su]shll2?|vmovl\.[su](8|16))$")
#: results that stay 8/16-bit data when every register they read is (a zero point added)
_NARROW_KEEP = re.compile(r"^(add|sub|eor|orr|and|mov|neg|sxtw|vadd\.i(8|16|32)|vsub\.i(8|16|32))$")
_NO_DEST = re.compile(r"^(st\w*|vst\S*|push|pop|stm\w*|cmp|cmn|tst|teq|ret|prfm|bl|blr|blx|bx)$")
_REG = re.compile(r"(?<![\w.:])([wx]\d+|v\d+|[qdshb]\d+|r\d+|lr|ip)(?![\w])")


def _mnemonic(instr: str) -> str:
    return instr.split(None, 1)[0].lower()


def _regs(ops: str, arch: str) -> list[str]:
    """Register operands in order; aarch64 w/x and v/q/d/s/h/b views share one name."""
    regs = _REG.findall(ops)
    if arch == "aarch64":
        return [("x" if r[0] in "wx" else "v") + r[1:] for r in regs]
    return regs


def _a64_macs(mn: str, ops: str) -> tuple[int, bool]:
    arr = re.findall(r"v\d+\.(\d+[bhsd])", ops)
    if _A64_DOT.match(mn):
        return (4 * _LANES.get(arr[0], 0) if arr else 0), False
    if _A64_WIDENING.match(mn) and arr and arr[0] in ("8h", "4s"):  # 8/16-bit inputs
        return _LANES[arr[0]], False
    if _A64_VEC_MUL.match(mn) and arr:  # 32-bit lanes: int8 MACs only on widened inputs
        return _LANES.get(arr[0], 0), arr[0] in ("4s", "2s")
    if _A64_SCALAR_MUL.match(mn):
        return 1, True
    return 0, False


def _a32_macs(mn: str, ops: str) -> tuple[int, bool]:
    neon = _A32_NEON_MUL.match(mn)
    if neon:
        width = int(neon.group(2))
        bits = 64 if neon.group(1) in ("mull", "mlal", "mlsl") or ops.strip()[:1] == "d" else 128
        return bits // width, width == 32
    if _A32_NEON_DOT.match(mn):
        return (16 if ops.strip().startswith("q") else 8), False
    if _A32_SCALAR_2.match(mn):
        return 2, False
    if _A32_SCALAR_16.match(mn):
        return 1, False
    return (1, True) if _A32_SCALAR_32.match(mn) else (0, False)


def count_macs(instr: str, arch: str, narrow: set[str] | None = None) -> int:
    """Multiply-accumulates one instruction does, 0 for a non-multiply.

    Parameters
    ----------
    instr : str
        One instruction as LLVM prints it, e.g. ``"sdot v0.4s, v1.16b, v2.16b"``.
    arch : str
        ``"aarch64"`` or ``"armv7"``.
    narrow : set of str, optional
        Registers that hold 8/16-bit data here (see :class:`Loop`). Multiplies that also
        compute addresses or requantize (scalar ``mul``/``madd``/``mla``, vector multiplies
        with 32-bit lanes) count only when a multiplicand is in it; ``None`` counts them.

    Notes
    -----
    aarch64: ``sdot``/``udot`` = 4 per destination lane (.4s = 16); ``smull``/``smlal``
    (and ``2``, ``u``) to .8h = 8, to .4s = 4; vector ``mul``/``mla`` one per lane; scalar
    ``madd``/``mul`` = 1. armv7: ``vmull``/``vmlal`` = 64 bits / element width (.s8 = 8,
    .s16 = 4); ``vmla``/``vmul`` by register width; ``smlabb``/``smulbb``/``mla``/``mul``
    = 1, ``smlad`` = 2.
    """
    parts = instr.strip().split(None, 1)
    mn, ops = parts[0].lower(), (parts[1] if len(parts) > 1 else "")
    if arch not in ("aarch64", "armv7"):
        raise ValueError(f"no MAC table for arch {arch!r} (aarch64 or armv7)")
    macs, ambiguous = (_a64_macs if arch == "aarch64" else _a32_macs)(mn, ops)
    if macs and ambiguous and narrow is not None:
        return macs if set(_regs(ops, arch)[1:3]) & narrow else 0
    return macs


def narrow_registers(instructions: list[str], arch: str) -> list[set[str]]:
    """Before each instruction of a loop body, the registers holding 8/16-bit data (two
    passes: what the end of one iteration leaves is live at the start of the next)."""
    live: set[str] = set()
    for _ in range(2):
        before = []
        for instr in instructions:
            before.append(set(live))
            parts = instr.split(None, 1)
            mn, regs = parts[0].lower(), _regs(parts[1] if len(parts) > 1 else "", arch)
            if not regs or _NO_DEST.match(mn) or _BRANCH.match(mn):
                continue
            keep = _NARROW_KEEP.match(mn) and len(regs) > 1 and set(regs[1:]) <= live
            (live.add if _NARROW_DEF.match(mn) or keep else live.discard)(regs[0])
    return before


# ---- functions and loops ----------------------------------------------------------------
_FUNC = re.compile(r"^([A-Za-z_][\w.$]*|\.L__tvm_parallel_lambda[\w.]*):")
_LABEL = re.compile(r"^(\.?[\w.$]+):")
_LAMBDA_REF = re.compile(r"\.L__tvm_parallel_lambda[\w.]*\b")


def split_functions(asm: str) -> dict[str, list[str]]:
    """Function name -> its lines (labels and instructions, comments and directives out;
    ``.L__tvm_parallel_lambda*`` references kept as ``#ref NAME`` lines)."""
    funcs: dict[str, list[str]] = {}
    body: list[str] | None = None
    for raw in asm.splitlines():
        line = re.split(r"\s(//|@)\s|\s(//|@)$", raw, maxsplit=1)[0].rstrip()
        head = _FUNC.match(line)
        if head and not line.startswith((" ", "\t")):
            body = funcs.setdefault(head.group(1), [])
            continue
        if body is None or not line.strip():
            continue
        if line.startswith(".Lfunc_end"):
            body = None
            continue
        body.extend(f"#ref {m}" for m in _LAMBDA_REF.findall(line) if not _LABEL.match(line))
        if _LABEL.match(line):
            body.append(line)
        elif line[:1] in " \t" and not line.strip().startswith("."):
            body.append(line.strip())
    return funcs


@dataclasses.dataclass
class Loop:
    """A loop body: the instructions from its head label to its backward branch, less the
    bodies of the loops inside it (``nested`` of them; 0 for an innermost loop)."""

    function: str
    label: str
    instructions: list[str]
    arch: str
    nested: int = 0

    @functools.cached_property
    def mac_counts(self) -> list[int]:
        """MACs of each instruction, with the registers' 8/16-bit data tracked through the
        body (a ``madd`` of two addresses is no MAC; of two loaded bytes it is)."""
        narrow = narrow_registers(self.instructions, self.arch)
        return [count_macs(i, self.arch, n) for i, n in zip(self.instructions, narrow)]

    @property
    def macs(self) -> int:
        """MACs one iteration does."""
        return sum(self.mac_counts)

    def summary(self) -> dict[str, Any]:
        """Counts of the MAC instructions by mnemonic, of the others, and in all."""
        mac, other = collections.Counter(), collections.Counter()
        for instr, n in zip(self.instructions, self.mac_counts):
            (mac if n else other)[_mnemonic(instr)] += 1
        return {"mac_instructions": dict(mac.most_common()), "other": sum(other.values()),
                "other_top": dict(other.most_common(6)), "total": len(self.instructions),
                "nested_loops_left_out": self.nested}


def _loops(name: str, lines: list[str], arch: str) -> list[Loop]:
    instrs: list[str] = []
    labels: dict[str, int] = {}
    spans = []
    for line in lines:
        if line.startswith("#ref"):
            continue
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instrs)
            continue
        parts = line.split(None, 1)
        if _BRANCH.match(parts[0].lower()) and len(parts) > 1:
            target = parts[1].split(",")[-1].strip()
            if target in labels:
                spans.append((labels[target], len(instrs), target))
        instrs.append(line)
    out = []
    for a, b, lab in spans:
        inside = [o for o in spans if o[:2] != (a, b) and a <= o[0] and o[1] <= b]
        cut = {i for o in inside for i in range(o[0], o[1] + 1)}
        body = [instrs[i] for i in range(a, b + 1) if i not in cut]
        out.append(Loop(name, lab, body, arch, nested=len(inside)))
    return out


def _kernel_functions(funcs: dict[str, list[str]], function: str) -> list[str]:
    """The compiled function of a Relax PrimFunc and the parallel lambdas it launches."""
    for name in (f"{function}_compute_", function, f"__tvm_ffi_{function}"):
        if name in funcs:
            out, todo = [], [name]
            while todo:
                cur = todo.pop()
                if cur in out or cur not in funcs:
                    continue
                out.append(cur)
                todo += [ln[5:] for ln in funcs[cur] if ln.startswith("#ref ")]
            return out
    return []


def hottest_loop(funcs: dict[str, list[str]], function: str, arch: str) -> Loop | None:
    """The innermost loop of ``function`` (and its lambdas) with the most MACs per
    iteration, among equals the shortest; when no innermost loop multiplies, the outer loop
    whose own instructions (inner loops cut out) do the most. ``None``: no loop multiplies."""
    loops = [lp for f in _kernel_functions(funcs, function) for lp in _loops(f, funcs[f], arch)
             if lp.macs > 0]
    inner = [lp for lp in loops if not lp.nested]
    if not (inner or loops):
        return None
    return max(inner or loops, key=lambda lp: (lp.macs, -len(lp.instructions)))
