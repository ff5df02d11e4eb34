# Sourced by the scripts: creates .venv and installs the project with a pinned torch build.
: "${TORCH_SPEC:=torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import conformance, torch, hypothesis, xdist" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options, e.g. --index-url
  .venv/bin/pip install --quiet --disable-pip-version-check $TORCH_SPEC
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
  touch .venv/.installed
fi
