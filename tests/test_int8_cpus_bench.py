"""benchmarks.int8_cpus: the check it runs on each CPU (here, on this one) and the table it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")  # the [onnx] extra
pytest.importorskip("onnx")

from benchmarks import int8_cpus  # noqa: E402 - after the optional-dependency skip


def test_the_form_picked_for_this_cpu_is_exact_here(checkpoint: Path, tmp_path: Path) -> None:
    """On this machine, whatever its CPU: the picked form's files give the fake-quant answers with and without
    ONNX Runtime's fused kernels, every unfused file computes what it computed when written, and both runtimes
    keep a W8A8 cell for every layer in the form picked for them."""
    int8_cpus.prepare_files(tmp_path, 40, checkpoint)
    row = int8_cpus.child(tmp_path)
    assert {(f["style"], f["form"], f["optimized"]) for f in row["files"]} == {
        (s, f, o) for s in int8_cpus.STYLES for f in ("portable", "s8") for o in (True, False)
    }
    for f in row["files"]:
        if not f["optimized"]:
            assert f["max_logit_diff"] == 0.0
        if f["form"] == row["int8_form"] or f["form"] == "portable":  # portable is exact on every CPU
            assert f["agreement"] >= 0.99, f
    picked = [m for m in row["measured"] if m["runtime"] == "torch" or m["int8_form"].startswith("auto")]
    assert len(picked) == 2 and all(m["w8a8_kept"] == m["layers"] and not m["reasons"] for m in picked)


def test_an_emulated_cpu_needs_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8_cpus.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install qemu-user"):
        int8_cpus.run_cpu("EPYC", tmp_path)


def test_the_summary_reads_the_picked_form_only() -> None:
    def files(agree_s8: float, agree_portable: float) -> list[dict]:
        return [
            {"style": "qdq", "form": form, "optimized": True, "agreement": a, "max_logit_diff": 0.0}
            for form, a in (("s8", agree_s8), ("portable", agree_portable))
        ]

    cpus = [
        {"cpu": "EPYC", "emulated": True, "flags": ["avx2"], "int8_form": "portable", "wall_s": 1.0,
         "files": files(0.95, 1.0), "measured": [{"runtime": "torch", "int8_form": "reduce_range", "w8a8_kept": 5, "layers": 5, "reasons": []}]},
        {"cpu": "host", "emulated": False, "flags": ["avx512vnni"], "int8_form": "s8", "wall_s": 1.0,
         "files": files(1.0, 1.0), "measured": []},
    ]  # fmt: skip
    data = {"images": 10, "cpus": cpus}
    text = int8_cpus.render(data)
    assert "| EPYC | yes | avx2 | portable | qdq | portable (picked) | yes | 100.00% | 0 |" in text
    assert "| EPYC | yes | avx2 | portable | qdq | s8 | yes | 95.00% | 0 |" in text
    assert "- EPYC: hwsearch picks `portable`; its files agree on >= 100.00%" in text
    meta = {"command": "python -m benchmarks.int8_cpus", "commit": "abcdef0123", "date": "2026-12-08T00:00:00"}
    block = int8_cpus.readme_block({**data, "meta": {**meta, "machine": {"cpu": "Some CPU"}}})
    assert "| EPYC | yes | portable | 100.00% | 95.00% |" in block  # the picked form, then s8 with fused kernels
    assert "at abcdef01, 2026-12-08, on Some CPU" in block
