"""Converter stages: each a plain function from one artifact kind to another.

torch module -> ONNX (checked, simplified): `onnx_export.export_onnx`;
torch module -> TorchScript lite (.ptl): `ptl_export.export_ptl`;
artifacts are cached by content hash: `cache`.
"""
