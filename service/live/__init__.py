"""The live path: LSL sources in, decoded (or simulated) streams out.

``lsl.py`` reads, checks and bins one source's samples and pushes its outputs; ``pipeline.py`` is what happens in
between, the same for every source: the decoder route chosen once per stream, the one cross-source batcher (the
HTTP app batches through it too), the one lag policy. ``sources.py`` finds and checks sources and makes outlets;
``binning.py`` holds the pure-numpy pieces (re-binning, clean-up, the window ring, the calibration block);
``drift_monitor.py`` and ``consumer.py`` watch and read the outputs.
"""
