"""Facts about the CPU this process runs on: which int8 form it computes exactly (what int8 export and measurement
depend on), its model name, and the names of the ``ort-cpu`` target that measures it.

x86 int8 GEMM kernels without VNNI (ONNX Runtime's MLAS, PyTorch's fbgemm) multiply uint8 activations by int8
weights with ``vpmaddubsw``, which adds each pair of products into a *saturating* int16. Two products of
``255 * 127`` overflow it (64,770 > 32,767), so 8-bit weights give wrong outputs on such CPUs (AVX2, AVX-512
without VNNI); VNNI (``vpdpbusd``) accumulates in int32 and aarch64's ``sdot``/``udot`` too. The pair bound
``2 * 255 * 63 = 32,130`` shows that weights on a grid of at most 7 bits never saturate.

The remedies both runtimes document, and where hwsearch uses them:

- ``portable`` (ONNX export default, and ONNX Runtime timing on CPUs without VNNI): 8-bit weights stored as
  uint8 with zero point 128, so the runtime picks its u8u8 kernel (int16 operands, int32 sums: exact); signed
  activations as uint8 with zero point 128 too. Same integers, same dequantized values as int8.
- ``s8``: int8 weights everywhere; exact on x86 with VNNI and on aarch64, the fastest form there.
- PyTorch's fbgemm measurement quantizes its input with ``reduce_range`` (7-bit activations), as PyTorch's own
  x86 qconfig does for the same reason; see :mod:`hwsearch.hardware.measure`.
"""

from __future__ import annotations

import functools
import importlib
import platform
import re
from collections.abc import Iterable
from pathlib import Path

from hwsearch.errors import ConfigError

__all__ = [
    "INT8_FORMS",
    "ORT_CPU",
    "U8_ZERO_POINT",
    "VNNI_FLAGS",
    "cpu_flags",
    "cpu_model",
    "has_vnni",
    "int8_form",
    "check_int8_form",
    "is_ort_cpu",
    "parse_ort_cpu",
]

INT8_FORMS: tuple[str, ...] = ("portable", "s8")
U8_ZERO_POINT = 128  # the zero point that carries a symmetric int8 grid in uint8 (the portable form)
# Names (numpy's cpuid names and Linux's /proc/cpuinfo flags) of x86 int8 dot products that accumulate in int32:
# AVX512-VNNI, and Sapphire Rapids' AVX-512 set (VNNI, AMX-INT8).
VNNI_FLAGS = frozenset({"avx512vnni", "avx512_vnni", "avx512_spr", "amx_int8"})
ORT_CPU = "ort-cpu"  # the measured target (hardware.ort_cpu); its names are parsed here, where no torch is imported
_NAME = re.compile(r"^ort-cpu(?::(\d+|all))?$")
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature names, lower case: from the ``cpuid`` instruction as numpy reads it at import (right
    under emulators and on every OS), else the flags Linux reports in /proc/cpuinfo, else none."""
    found: dict[str, bool] = {}
    for private in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy >= 2, then 1.x
        try:
            found = dict(importlib.import_module(private).__cpu_features__)
            break
        except (ImportError, AttributeError):
            continue
    if found:
        return frozenset(name.lower() for name, present in found.items() if present)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def has_vnni(flags: Iterable[str] | None = None) -> bool:
    """True when the x86 CPU has an int32-accumulating int8 dot product (unknown counts as no)."""
    return bool(VNNI_FLAGS & {f.lower() for f in (cpu_flags() if flags is None else flags)})


def int8_form(machine: str | None = None, flags: Iterable[str] | None = None) -> str:
    """The fastest int8 form that is exact on this CPU (or on ``machine`` with ``flags``): ``s8`` or ``portable``.

    Non-x86 CPUs (aarch64's dot products accumulate in int32) and x86 with VNNI get ``s8``; every other x86,
    including one whose flags cannot be read, gets ``portable``.
    """
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch not in _X86:
        return "s8"
    return "s8" if has_vnni(flags) else "portable"


def check_int8_form(form: str) -> str:
    """``form`` itself, or ``auto`` resolved for this CPU; anything else is a one-line ConfigError."""
    if form == "auto":
        return int8_form()
    if form not in INT8_FORMS:
        raise ConfigError(f"int8 form {form!r} is not one of auto, {', '.join(INT8_FORMS)}")
    return form


def is_ort_cpu(name: str) -> bool:
    """Whether a ``--target`` value is meant for the ort-cpu target (``ort-cpu`` or ``ort-cpu:...``; a malformed
    suffix is :func:`parse_ort_cpu`'s to refuse, with the forms it takes)."""
    text = str(name)
    return text == ORT_CPU or text.startswith(ORT_CPU + ":")


def parse_ort_cpu(name: str) -> int:
    """The thread count a target name asks for; a one-line ConfigError for a malformed one."""
    m = _NAME.match(str(name))
    if m is None:
        raise ConfigError(f"target {name!r} is not ort-cpu, ort-cpu:N or ort-cpu:all")
    if m.group(1) is None:
        return 1
    if m.group(1) == "all":
        from hwsearch.cores import available_cores

        return available_cores()
    threads = int(m.group(1))
    if threads < 1:
        raise ConfigError(f"target {name!r}: the thread count must be at least 1, e.g. ort-cpu:2")
    return threads


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") or line.startswith("Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
