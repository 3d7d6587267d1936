"""bmqa_jax.train_lib: the parts every trainer shares (BMQA, recogniser, captioner).

`state` (one train state with batch statistics, the finite check), `optim`
(schedule and optimiser from a config), `checkpoint` (orbax manager, resume,
weights-only loading), `workdir` (the workdir's config and lock) and `loop`
(the step loop: progress, TensorBoard, non-finite stop, checkpoint cadence).
"""
