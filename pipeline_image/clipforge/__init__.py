"""ClipForge: raw video in, training-ready clip datasets out."""

import os

# Models load from the job's model directory only: never reach for a hub at run time, where
# a missing file would otherwise turn into a download attempt (or a hang without network).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
