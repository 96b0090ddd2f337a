"""The decoding service: runtime engines, the FastAPI app, the LSL bridge."""

import os
from pathlib import Path

# liblsl logs every stream connection at INFO level; keep its warnings and errors unless the user configured it
# (read once, when liblsl starts: this package is imported before any module here imports pylsl)
os.environ.setdefault("LSLAPICFG", str(Path(__file__).with_name("lsl_api.cfg")))
