"""From a checkpoint to a bundle a device takes.

    export.py     `toolkit export`: components to ONNX and TorchScript lite, verified, cached
    targets.py    deployment targets as data (targets/*.toml, validated against target.schema.json)
    build.py      `toolkit build`: per component the stages of its format's backend, then the bundle
    bundle.py     the bundle on disk: manifest (schema-validated), checksums, archives

The top layer under api / cli: may import every other package. Imported by api, cli, bench, and
(bundle.py only, to read a bundle) verify.bundle and pipeline.artifacts.
"""
