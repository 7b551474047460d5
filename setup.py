"""Builds the compiled fast path ``agentd._fastpath`` from ``agentd/_fastpath.pyx``.

Set ``AGENTD_NO_EXTENSIONS=1`` to install without compiling; agentd then runs on
the pure-Python twin ``agentd/_fastpath_py.py``. Without a working C compiler (or the
Python headers) the build does the same, with a notice, rather than fail: the twin
behaves the same, only slower (as aiohttp, frozenlist and multidict do).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NOTICE = """
notice: the compiled fast path was not built ({reason}).
        agentd runs on its pure-Python twin (agentd/_fastpath_py.py): the same behaviour,
        slower request parsing. For the compiled one, install a C compiler and the Python
        headers (Debian/Ubuntu: apt-get install build-essential python3-dev), then run
        `make ext`.
"""


# Written beside the sources when the build fell back (and removed when it works), so
# that the tests comparing both implementations know why the compiled one is missing.
FALLBACK = os.path.join("agentd", "_fastpath.fallback")


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure twin when compiling is impossible."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, a failing one, missing headers
            self._give_up(exc)
        else:
            if os.path.exists(FALLBACK):
                os.remove(FALLBACK)

    @staticmethod
    def _give_up(exc: Exception) -> None:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(NOTICE.format(reason=reason), file=sys.stderr)
        if os.path.isdir("agentd"):
            with open(FALLBACK, "w") as fh:
                fh.write(reason + "\n")


ext_modules = []
if os.environ.get("AGENTD_NO_EXTENSIONS", "") in ("", "0"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("agentd._fastpath", ["agentd/_fastpath.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
