"""AlignNet-BCI: cross-day alignment of motor-cortex spikes and behavior, served in real time.

Packages, each importing only the ones before it (``tests/test_layout.py`` checks it):
``model`` (networks, data contract, artifacts; pure) <- ``recordings`` (dataset format, importers, preprocessing,
simulator) <- ``training`` (trainer, protocols, report, export) <- ``service`` (engines, HTTP app, LSL bridge,
launcher, benchmarks) <- ``clients`` (Python client, demo, replayer) <- ``cli`` (the ``alignnet`` command).
"""

__version__ = "0.1.0"
