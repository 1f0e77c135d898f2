# Entry points for a fresh machine: `make demo` (set up + the main job), `make test` (set up + the fast tests, the
# edit-test loop), `make test-all` (set up + every test: SLURM, ranks, preemption, sweeps, browser, GPU dry run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where the CPU build of torch comes from. Empty: pip's own configuration (these machines have a local CPU wheel). On a
# laptop whose pip would take PyPI's torch (a CUDA build, several GB): make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test test-all clean

$(BIN)/recon3d: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	# DeepSpeed ships as source: built against the torch above (no build isolation, or pip fetches another torch),
	# with its CPU shared-memory comm op compiled now instead of JIT on first use (about 3 minutes, once)
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(BIN)/pip install -q --no-build-isolation -c constraints.txt deepspeed==0.19.8
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/recon3d

demo: setup
	$(BIN)/recon3d demo

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
