"""The image encoders' convolution and max pooling in forms that run fast on
XLA:CPU (:mod:`.conv`, :mod:`.depthwise`, :mod:`.pooling`), each a drop-in
for the ``jax.lax`` / ``flax.linen`` function it replaces and equal to it up
to float32 rounding.

Models never import this package: they ask
:func:`bmqa_jax.models.image.ops.for_backend`, the one way in (import-linter
contract ``cpu_kernels`` in ``.importlinter``). On other backends XLA's own
ops run.
"""
