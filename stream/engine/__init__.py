"""The inference engine: detector, crops, batched Sapiens2 forwards and pose decoding, with no sockets.

- ``runtime``: device, precision, CPU threads, model loading (and the random-weights fallback)
- ``device``: CUDA copy/compute streams, pinned host buffers, the overlap scheduler, static batch sizes
- ``batches``: the records a group of frames passes through (collected, prepared, launched)
- ``state``: per-source state carried between frames (boxes between detector runs, smoothers)
- ``tasks``: the full-frame dense tasks (normals, pointmaps, matting) and segmentation on person crops
- ``engine``: ``InferenceEngine`` (prepare / launch / finish)
"""

from stream.engine.batches import Group
from stream.engine.engine import InferenceEngine
from stream.engine.runtime import ModelLoadError

__all__ = ["Group", "InferenceEngine", "ModelLoadError"]
