# The two commands of the README: `make demo` (set up + run the app on the embedded default)
# and `make test` (set up + run the test suite; .ci/run calls exactly this).
export VTK_DEFAULT_OPENGL_WINDOW ?= vtkEGLRenderWindow
VENV := .venv/bin

.PHONY: demo test setup bench train-demo

setup:
	scripts/setup.sh

demo: setup
	$(VENV)/volviz demo

test:
	scripts/setup.sh --test
	$(VENV)/ruff check volviz tests benchmarks
	$(VENV)/ruff format --check volviz tests benchmarks
	$(VENV)/python -m pytest -q

bench: setup
	$(VENV)/python benchmarks/run_all.py

train-demo: setup
	$(VENV)/volviz train-demo all
