"""Speech recognition for spoken quality descriptions (paper Eq. 2).

- ``text``: character vocabulary (CTC blank, space, apostrophe, a-z).
- ``model``: DeepSpeech2-style CTC model (Flax Linen).
- ``decode``: greedy and prefix beam-search CTC decoding.
- ``features`` / ``data``: cached log-mel features and padded batches.
- ``train``: training loop, WER/CER evaluation (jiwer).
- ``infer``: load a trained recogniser, transcribe files or a manifest.
"""
