"""bmqa_jax.captioner: the QSD captioner F_img2qsd of paper Sec. 5.5.2 (Eq. 15–16).

Show-Attend-Tell (Xu et al. 2015) on the registry's image encoders: soft
(Bahdanau) attention over the encoder's tokens, an LSTM decoder with the
doubly-stochastic attention penalty, greedy and beam-search decoding with
per-word attention maps, corpus BLEU-4 and top-5 word accuracy.
"""
