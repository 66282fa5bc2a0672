# The two commands a newcomer runs (README.md): `make demo` and `make test`.
# Each sets up .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Another torch (a CUDA build, say): make test TORCH='torch==2.13.0+cu126' TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

.PHONY: setup demo test figures induction clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@# Figures need Graphviz, a Times face (Nimbus Roman, TeX Gyre Termes) and, for the
	@# TikZ tests, pdflatex with TikZ and Times; install them where we can (CI runs as
	@# root on Debian).
	@(command -v dot >/dev/null && command -v pdflatex >/dev/null && \
	    fc-list | grep -q "Nimbus Roman" && kpsewhich tikz.sty mathptmx.sty >/dev/null) || \
	    (command -v apt-get >/dev/null && (apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz fonts-urw-base35 \
	    fonts-texgyre fonts-lmodern texlive-latex-base texlive-pictures texlive-fonts-recommended >/dev/null)) || \
	    { echo "Graphviz, fonts or TeX are missing: install graphviz, fonts-urw-base35, texlive-latex-base, texlive-pictures and texlive-fonts-recommended (or brew install graphviz; a TeX distribution)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	echo '$(TORCH)' > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH)'
	$(BIN)/python -m pip install -q -c $(VENV)/torch-constraint.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/python examples/demo.py

# One pytest worker per core (pytest-xdist); `make test PYTEST_ARGS=...` passes more options.
test: setup
	$(BIN)/python -m pytest -q -n auto $(PYTEST_ARGS)

figures: setup
	$(BIN)/python examples/figures.py

induction: setup
	$(BIN)/tndsl study induction -o examples/induction/report

clean:
	rm -rf $(VENV) build dist *.egg-info
