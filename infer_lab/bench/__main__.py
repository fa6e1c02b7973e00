"""``python -m infer_lab.bench decode [--json PATH] [--quick]``: see :mod:`infer_lab.bench`."""

from . import main

main()
