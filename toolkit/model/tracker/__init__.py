"""Neural modules of the EfficientSAM3 video tracker (checkpoint prefix `tracker.`). Imports: torch and
`toolkit.model` only."""
from .mask_decoder import SamMaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder, memory_input, memory_mask_probability
from .prompt_encoder import SamPromptEncoder
from .tracker import NO_OBJ_SCORE, TrackerModules, effective_iou_score, sine_encoding_1d

__all__ = [
    "NO_OBJ_SCORE",
    "MemoryAttention",
    "MemoryEncoder",
    "SamMaskDecoder",
    "SamPromptEncoder",
    "TrackerModules",
    "effective_iou_score",
    "memory_input",
    "memory_mask_probability",
    "sine_encoding_1d",
]
