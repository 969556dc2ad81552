"""The house: the package's layout (layers, no cycles, gates apart from fv's own tests, no test module importing
another) and the docs, whose every command runs."""
