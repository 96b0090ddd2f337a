"""Benchmarks of the runtime engines (``engines.py``), HTTP under load (``load.py``, open or closed loop) and many LSL
streams (``streams.py``, with its helper process ``worker.py``), run by ``alignnet bench``. Outside the service
package: the service never imports them."""
