"""bmqa_jax.experiments: what a run is made of above the three model families.

Where descriptions come from (`descriptions`: text, the recogniser, the
captioner, with their cache), repeated scene-wise splits (`repeated`) and the
tables across workdirs (`report`).
"""
