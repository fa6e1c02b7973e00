"""Test-session setup shared by the unit tests and the notebooks (nbval)."""

import os
import tempfile

# Exercise progress goes to a throwaway folder, never the user's real store. Set at
# import time so that notebook kernels (started with --nbval-current-env) inherit it.
os.environ["INFER_LAB_HOME"] = tempfile.mkdtemp(prefix="infer-lab-test-home-")
