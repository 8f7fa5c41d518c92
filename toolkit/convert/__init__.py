"""Converter stages: each a plain function from one artifact kind to another.

torch module -> ONNX (checked, simplified): `onnx_export.export_onnx`;
torch module -> TorchScript lite (.ptl): `ptl_export.export_ptl`;
ONNX -> ONNX Runtime mobile (.ort + required_operators.config): `ort_mobile.convert_to_ort`;
torch module -> Core ML mlprogram (.mlpackage): `coreml`;
ONNX -> TensorRT-ready ONNX, operator check, engine build: `tensorrt`;
BatchNorm / RepVGG folding before export: `reparam`;
artifacts are cached by content hash: `cache`.

Imports: components, model (re-parameterisation), runners, runtime (the .ort reader), errors; the
backends call these stages, nothing here calls a backend.
"""
