"""The deployable parts of EfficientSAM3, declared once.

    registry.py   `COMPONENTS`: per component its checkpoint prefixes, export graph, inputs and
                  outputs, typical and golden feeds (walked by `toolkit.model.chain`)
    spec.py       tensor specs with symbolic dimensions (what a component takes and gives, as data)

Imports: model, pipeline.preprocess, verify.golden (golden feeds); nothing of deploy, bench or api.
"""
