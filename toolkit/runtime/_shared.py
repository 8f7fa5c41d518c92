"""The three torch-free toolkit modules the runtime shares instead of copying (one definition each):
the memory-bank rules (`toolkit/pipeline/memory_bank.py`), the walk of the detector chain
(`toolkit/model/chain.py`) and the detector post-processing (`toolkit/pipeline/postprocess.py`). All import
numpy only; `tests/test_runtime.py` checks that importing `toolkit.runtime` loads no torch. This is
the only runtime module importing from outside toolkit/runtime, so a regrouping of the toolkit
changes these three lines only.
"""
from toolkit.model.chain import ground  # noqa: F401
from toolkit.pipeline.memory_bank import MemoryBank, MemoryPlan, frame_quality, use_multimask  # noqa: F401
from toolkit.pipeline.postprocess import postprocess_grounding, resize_bilinear, sigmoid  # noqa: F401
