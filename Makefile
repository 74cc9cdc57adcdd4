# The two commands: `make book` and `make test` (`make test-fast`, its fast subset, while developing). Each creates
# .venv and installs requirements.txt if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book test test-fast lab install clean check-book

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -q
	$(BIN)/python -m pytest --nbval-lax notebooks -q -p no:cacheprovider

# The unit tests less those marked slow (tests/conftest.py: notebooks, whole command lines, training, compiles):
# under 3 minutes on two CPU cores. One thread each: on a shared machine two would spin against other jobs' threads.
TEST_THREADS ?= 1
test-fast: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest tests -q -m "not slow"

# Open every page of the built book in headless Chromium (Debian's `chromium`, via Playwright): no network requests,
# no stderr/warning blocks or raw reprs, images loaded, tables fit, the explorer reacts; screenshots in _build/screenshots/.
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)
check-book: book
	@if [ -z "$(CHROMIUM)" ]; then echo "check-book skipped: no chromium on PATH (apt-get install chromium)"; exit 0; fi; \
	$(BIN)/python scripts/check_book.py $(CHROMIUM)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf _build .jupyter_cache
