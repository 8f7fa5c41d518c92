"""The clean-room PyTorch model, module by module as upstream builds it (stage by stage against the
golden fixture): repvit.py and neck.py (image encoder and FPN), text.py (MobileCLIP-S1 text
encoder), geometry.py, fusion_encoder.py, fusion_decoder.py, scoring.py, segmentation_head.py,
detector.py (the detector's stages), tracker/ (the video tracker's modules); chain.py walks the
detector chain once for every caller (numpy in, numpy out), chunked_attention.py the memory-lean
attention the exported graphs use.

Imports: torch, numpy and this package only; everything else in the toolkit builds on it.
"""
