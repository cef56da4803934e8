"""benchmarks.int8_cpus: the check it runs on each CPU (here, on this one), how it runs one under QEMU, and the
tables it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")  # the [onnx] extra
pytest.importorskip("onnx")

from benchmarks import _int8_child, int8_cpus  # noqa: E402 - after the optional-dependency skip


def test_the_form_picked_for_this_cpu_is_exact_here(checkpoint: Path, tmp_path: Path) -> None:
    """On this machine, whatever its CPU: the picked form's files give the fake-quant answers with and without
    ONNX Runtime's fused kernels, every unfused file computes what it computed when written, and both runtimes
    keep a W8A8 cell for every layer in the form picked for them."""
    from hwsearch.hardware.cpu import int8_form

    int8_cpus.prepare_files(tmp_path, 40, checkpoint)
    row = _int8_child.main([str(tmp_path), "--measure"])
    picked = int8_form(machine=row["machine"], flags=row["features"])
    assert picked == int8_form()  # the child reads the CPU as hwsearch does
    assert {(f["style"], f["form"], f["optimized"]) for f in row["files"]} == {
        (s, f, o) for s in int8_cpus.STYLES for f in ("portable", "s8") for o in (True, False)
    }
    for f in row["files"]:
        if not f["optimized"]:
            assert f["max_logit_diff"] == 0.0
        if f["form"] in (picked, "portable"):  # portable is exact on every CPU
            assert f["agreement"] >= 0.99, f
    kept = [m for m in row["measured"] if m["runtime"] == "torch" or m["int8_form"].startswith("auto")]
    assert len(kept) == 2 and all(m["w8a8_kept"] == m["layers"] and not m["reasons"] for m in kept)


@pytest.mark.parametrize("cpu", ["EPYC", "aarch64:max"])
def test_an_emulated_cpu_needs_qemu(cpu: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8_cpus.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install qemu-user"):
        int8_cpus.run_cpu(cpu, tmp_path, tmp_path, tmp_path)


@pytest.mark.parametrize(("model", "dot"), [("cortex-a72", False), ("max", True)])
def test_an_aarch64_cpu_runs_in_its_root_with_its_features(
    model: str, dot: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU serves the root's /proc/cpuinfo to the guest: it names the model's features (the dot product or not),
    and only the files are checked there (no --measure: no torch on that Python)."""
    monkeypatch.setattr(int8_cpus.shutil, "which", lambda name: f"/usr/bin/{name}")
    root, site = tmp_path / "root", tmp_path / "site"
    root.mkdir()
    cmd, env = int8_cpus.child_command(f"aarch64:{model}", tmp_path, root, site)
    assert cmd[:5] == ["/usr/bin/qemu-aarch64", "-L", str(root), "-cpu", model]
    assert cmd[5] == str(root / "usr" / "bin" / "python3.11") and "--measure" not in cmd
    assert env["PYTHONPATH"] == str(site)
    features = (root / "proc" / "cpuinfo").read_text().split("Features\t: ")[1].splitlines()[0].split()
    assert ("asimddp" in features) == dot
    assert (root / "sys" / "devices" / "system" / "cpu" / "possible").read_text() == "0\n"
    with pytest.raises(SystemExit, match="'cortex-x9'"):
        int8_cpus.child_command("aarch64:cortex-x9", tmp_path, root, site)


def test_the_summary_reads_the_picked_form_only() -> None:
    def files(agree_s8: float, agree_portable: float) -> list[dict]:
        return [
            {"style": "qdq", "form": form, "optimized": True, "agreement": a, "max_logit_diff": 0.0}
            for form, a in (("s8", agree_s8), ("portable", agree_portable))
        ]

    run = {"command": "python -m benchmarks.int8_cpus", "commit": "abcdef0123", "date": "2026-12-08T00:00:00"}
    torch_cell = {"runtime": "torch", "int8_form": "reduce_range", "w8a8_kept": 5, "layers": 5, "reasons": []}
    common = {"wall_s": 1.0, "images": 10, "run": run}
    cpus = [
        {"cpu": "EPYC", "emulated": True, "flags": ["avx2"], "machine": "x86_64", "int8_form": "portable",
         "files": files(0.95, 1.0), "measured": [torch_cell], **common},
        {"cpu": "aarch64:max", "emulated": True, "flags": ["asimddp"], "machine": "aarch64", "int8_form": "s8",
         "files": files(1.0, 1.0), "measured": [], **common},
    ]  # fmt: skip
    data = {"cpus": cpus, "meta": {**run, "machine": {"cpu": "Some CPU"}}}
    text = int8_cpus.render(data)
    assert "| EPYC | yes | avx2 | 10 | qdq | portable (picked) | yes | 100.00% | 0 |" in text
    assert "| EPYC | yes | avx2 | 10 | qdq | s8 | yes | 95.00% | 0 |" in text
    assert "- EPYC (x86_64): hwsearch picks `portable`; its files agree on >= 100.00%" in text
    block = int8_cpus.readme_block(data)
    assert "| EPYC | yes | portable | 100.00%, 0 | 95.00%, 0 | 5/5 |" in block  # the picked form, then s8 fused
    assert "| aarch64:max | yes | s8 | 100.00%, 0 | 100.00%, 0 | not run |" in block
    assert "`python -m benchmarks.int8_cpus` at abcdef01, 2026-12-08" in block
