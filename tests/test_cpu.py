"""Which int8 form each CPU computes exactly: the choice that keeps int8 export and measurement right everywhere."""

from __future__ import annotations

import pytest

from hwsearch.errors import ConfigError
from hwsearch.hardware import cpu


@pytest.mark.parametrize(
    ("machine", "flags", "form"),
    [
        ("x86_64", {"avx2", "fma"}, "portable"),  # AVX2 only: u8s8 saturates
        ("x86_64", {"avx2", "avx512f", "avx512bw"}, "portable"),  # AVX-512 without VNNI saturates too
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "s8"),  # /proc/cpuinfo spelling
        ("AMD64", {"AVX2", "AVX512VNNI"}, "s8"),  # numpy's cpuid spelling, Windows machine name
        ("x86_64", {"amx_int8"}, "s8"),
        ("x86_64", set(), "portable"),  # flags unknown: the form that is right anyway
        ("aarch64", set(), "s8"),  # sdot/udot accumulate in int32
        ("arm64", {"asimd"}, "s8"),
    ],
)
def test_int8_form_follows_the_cpu(machine: str, flags: set[str], form: str) -> None:
    assert cpu.int8_form(machine, flags) == form


def test_this_cpu_gets_a_known_form() -> None:
    assert cpu.check_int8_form("auto") == cpu.int8_form() in cpu.INT8_FORMS
    assert all(f == f.lower() for f in cpu.cpu_flags())


@pytest.mark.parametrize("form", cpu.INT8_FORMS)
def test_named_forms_pass_through(form: str) -> None:
    assert cpu.check_int8_form(form) == form


def test_unknown_form_is_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"int8 form 'u4' is not one of auto, portable, s8"):
        cpu.check_int8_form("u4")


def test_pair_bound_behind_the_forms() -> None:
    """Two u8 x s8 products must fit int16 for a weight grid to be safe in u8s8 kernels: 7 bits do, 8 do not."""
    int16_max = 2**15 - 1
    assert 2 * 255 * (2**6 - 1) <= int16_max < 2 * 255 * (2**7 - 1)
