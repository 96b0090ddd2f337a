"""AlignNet-BCI: cross-day alignment of motor-cortex spikes and behavior, served in real time.

The packages are folders at the repository root (``model/``, ``recordings/``, ...), mapped into this namespace by
pyproject.toml's ``package-dir``; each imports only the ones before it (``tests/test_layout.py`` checks it):
``model`` (networks, data contract, artifacts; pure) <- ``recordings`` (dataset format, importers, preprocessing,
simulator) <- ``training`` (trainer, protocols, report, export) <- ``service`` (engines, HTTP app, LSL bridge,
launcher, benchmarks) <- ``clients`` (Python client, demo, replayer) <- ``cli`` (the ``alignnet`` command).
"""

from pathlib import Path

__version__ = "0.1.0"

# A checkout used without installing it (``PYTHONPATH=.``: the GPU machine's scripts, a baseline tree in a
# benchmark): the packages are this folder's siblings, so the namespace looks there too. Installed (a wheel copies
# them into this folder) or mapped by an editable install, this changes nothing they do not already find.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "model").is_dir() and (_checkout / "model" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (a package's own __path__)
