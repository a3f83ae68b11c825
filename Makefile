# The two commands of the README: `make demo` and `make test`. Both create .venv when
# missing and install the pinned, tested versions (constraints.txt) first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dynalens-installed

.PHONY: demo test lint bench bench-peers install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q -c constraints.txt --no-deps backpack-for-pytorch
	$(PY) -m pip install -q -c constraints.txt --no-deps captum
	# PyC (benchmark reference): its declared deps (pgmpy, pyro-ppl, ...) are not needed by
	# torch_concepts.nn.functional, which bench_concepts.py calls
	$(PY) -m pip install -q -c constraints.txt --no-deps --pre pytorch-concepts
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dynalens demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check dynalens tests benchmarks
	$(VENV)/bin/ruff format --check dynalens tests benchmarks
	$(VENV)/bin/mypy

# the patching benchmark's peers: nnsight and pyvene declare torch / plotting stacks that
# must not replace the CPU torch, so they and the pure-python deps they import come --no-deps
PATCH_PEERS := nnsight pyvene greenlet zstandard matplotlib contourpy cycler fonttools \
	kiwisolver pyparsing pillow
bench-peers: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt --no-deps $(PATCH_PEERS)

# every CPU benchmark (about 40 minutes on 2 cores), then the README tables
bench: $(STAMP) bench-peers
	$(PY) benchmarks/bench_recording.py
	$(PY) benchmarks/bench_plane.py
	$(PY) benchmarks/bench_mi.py
	$(PY) benchmarks/bench_gns.py
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_cbs.py
	$(PY) benchmarks/bench_concepts_tcav.py
	$(PY) benchmarks/bench_patching.py
	$(PY) benchmarks/bench_concepts.py
	$(PY) benchmarks/summarize.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
