"""Verification: every artifact against its PyTorch source, and the model against upstream.

    compare.py    the reference (built lazily per component) and `compare`: runners on the same feeds,
                  per-output errors against the tolerances
    golden.py     the upstream fixture (../shared/golden) and its tolerances
    bundle.py     artifact parity and `toolkit verify BUNDLE` (manifest, files, parity, quantized gates)

Imports: components, runners, convert, pipeline, quantize (gate figures) and deploy.bundle (reading
a bundle); not deploy's export or build, which import this package.
"""
