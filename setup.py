"""Builds the compiled fast path ``agentd._fastpath`` from ``agentd/_fastpath.pyx``.

Set ``AGENTD_NO_EXTENSIONS=1`` to install without compiling; agentd then runs on
the pure-Python twin ``agentd/_fastpath_py.py``.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("AGENTD_NO_EXTENSIONS", "") in ("", "0"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("agentd._fastpath", ["agentd/_fastpath.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
