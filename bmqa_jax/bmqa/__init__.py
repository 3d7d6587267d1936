"""bmqa_jax.bmqa: the BMQA model (paper Sec. 4), its training stages and evaluation.

`model` (towers, attentive pooling Eq. 7, fusion Eq. 14), `pretrain` (stage-PT
heads), `stage` (the pure plan of one stage), `train` (the stages in order),
`evaluate` (PLCC/SRCC/KRCC/RMSE of a workdir), `feature_cache` (frozen-tower
features), `scoring` and `shipped` (scores of photos).
"""
