# Two commands do all set-up: `make serve` and `make test`. Both create the
# virtual environment in .venv on first use (torch comes from the local wheel cache).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e clients/python
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/faceserve serve

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# A quick run of the benchmarks behind the README's sizing figures (a few minutes on 2 CPU
# cores): the pipeline's speed per stage (ours against dlib) and FAISS search at 10^4 and
# 10^5 faces. Each prints a table and writes JSON under benchmarks/results/ (not kept in
# git); `--help` of each script in benchmarks/ gives the full-size options.
bench: $(STAMP)
	$(PY) benchmarks/bench_pipeline.py --repeats 2
	$(PY) benchmarks/bench_search.py --sizes 1e4,1e5 --indexes flat,pq --queries 200 --single 100

clean:
	rm -rf $(VENV) .pytest_cache
