# Installs into the active Python environment (your venv when one is active), so an existing torch is reused.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= runs/demo
# pip's cap on this kind of machine keeps torch at the local 2.14.1 build; elsewhere any torch in range works.
INSTALL_STAMP := .install.stamp

.PHONY: install demo test test-fast lint tables tables-check clean

# torchattacks (Square in reports) without its dependencies: it pins requests~=2.25.1, which it never imports.
TORCHATTACKS := "torchattacks>=3.5,<4"

$(INSTALL_STAMP): pyproject.toml
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(TORCHATTACKS)
	@touch $(INSTALL_STAMP)

# Reinstalls when the active Python imports hwsearch from another checkout (a moved or copied tree), which the
# stamp alone cannot see; find_spec reads the path without importing torch.
INSTALLED_HERE := import sys, importlib.util as u, pathlib as p; sys.path = [d for d in sys.path if d not in ("", ".")]; \
	s = u.find_spec("hwsearch"); \
	raise SystemExit(s is None or p.Path(s.origin).resolve().parents[1] != p.Path.cwd().resolve())

install: $(INSTALL_STAMP)
	@$(PYTHON) -c '$(INSTALLED_HERE)' 2>/dev/null || { $(PIP) install -q -e ".[dev]" && $(PIP) install -q --no-deps $(TORCHATTACKS); }

# The search scores robustness with PGD-3 on 200 images, the cheapest estimate that ranks smallcnn's policies as the report's full
# attack set does (benchmarks/results/robust_fidelity.json); the report runs the full set. The promise is "within
# 1 point of fixed 8-bit's accuracy": a 1,000-image accuracy has a standard error of ~0.6 points at 96%, and the
# best of 200 episodes is optimistic on it, so search-val accuracy below 8-bit's costs dearly (--max-accuracy-drop 0:
# a point below it costs as much reward as 22 points of robustness earn), and the policy handed over is the final
# pick: the 10 best re-scored on 3,000 training images the search never scored (docs/ARCHITECTURE.md, "The pick"). Threads or evaluation shards are chosen by timing (hwsearch.cores); both score a policy as one
# process does, so the demo's episodes do not depend on the machine's core count or load.
demo: install
	@test -f $(OUT)/fp32.pt || $(PYTHON) -m hwsearch.cli train --out $(OUT)/fp32.pt
	$(PYTHON) -m hwsearch.cli search --checkpoint $(OUT)/fp32.pt --target bitfusion-edge --budget latency=0.5x \
		--robust-weight 5 --max-accuracy-drop 0 --eps 0.1 --steps 3 --robust-images 200 --episodes 200 --out $(OUT)/search --overwrite
	$(PYTHON) -m hwsearch.cli compare --checkpoint $(OUT)/fp32.pt --target bitfusion-edge \
		--policy searched=$(OUT)/search/policy.json --eps 0.1 --out $(OUT)/report

test: install
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

lint: install
	$(PYTHON) -m ruff check hwsearch envs tests benchmarks
	$(PYTHON) -m ruff format --check hwsearch envs tests benchmarks
	$(PYTHON) -m mypy

tables: install
	$(PYTHON) -m hwsearch.hardware.regenerate

tables-check: install
	$(PYTHON) -m hwsearch.hardware.regenerate --check

clean:
	rm -rf $(INSTALL_STAMP) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
