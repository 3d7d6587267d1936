"""DeepSpeech2-style CTC speech recogniser (paper Eq. 2, ref. [1]).

Log-mel frames -> 2D convolutions strided over (time, frequency), each with
batch norm and a clipped ReLU -> bidirectional GRU layers whose two directions
are summed (DeepSpeech2, Amodei et al. 2016, Eq. 3) -> per-frame character
logits (``text.VOCAB``, index 0 the CTC blank).

Padding is explicit: every call takes the valid frame count of each
utterance, convolution outputs beyond it are zeroed and excluded from the
batch-norm statistics, and the recurrent layers stop at it, so an utterance
gives the same logits alone or padded in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmqa_jax.speech import text

__all__ = ["DeepSpeech2", "output_lengths", "frame_mask", "count_params"]


def output_lengths(lengths, time_strides: Sequence[int]):
  """Frames left after the convolutions (``ceil(length / stride)`` each)."""
  for s in time_strides:
    lengths = -(-lengths // s)  # ceil division, works for ints, numpy, jax
  return lengths


def frame_mask(lengths, num_frames: int):
  """``[B, num_frames]`` bool, True on valid frames."""
  return jnp.arange(num_frames)[None, :] < jnp.asarray(lengths)[:, None]


class DeepSpeech2(nn.Module):
  """Conv front end + bidirectional GRUs + per-frame vocabulary logits.

  Attributes:
    vocab_size: output classes including the CTC blank.
    conv_features: channels of each 2D convolution.
    conv_kernels: (time, frequency) kernel of each convolution.
    conv_strides: (time, frequency) stride of each convolution.
    rnn_hidden: GRU width (per direction; directions are summed).
    rnn_layers: number of bidirectional GRU layers.
    relu_clip: upper clip of the activation (DeepSpeech2 uses 20).
    bn_momentum: batch-norm running-average momentum.
    dropout_rate: dropout on the input of each recurrent layer and the output.
    rnn_unroll: time steps unrolled per scan iteration (speed only).
    dtype: activation dtype (parameters stay float32).
  """

  vocab_size: int = text.VOCAB_SIZE
  conv_features: Sequence[int] = (32, 32)
  conv_kernels: Sequence[tuple[int, int]] = ((11, 41), (11, 21))
  conv_strides: Sequence[tuple[int, int]] = ((2, 2), (2, 2))
  rnn_hidden: int = 256
  rnn_layers: int = 3
  relu_clip: float = 20.0
  bn_momentum: float = 0.99
  dropout_rate: float = 0.0
  rnn_unroll: int = 1
  dtype: jnp.dtype = jnp.float32

  @property
  def time_strides(self) -> tuple[int, ...]:
    return tuple(s[0] for s in self.conv_strides)

  @nn.compact
  def __call__(self, features, lengths, *, train: bool = False):
    """Per-frame logits.

    Args:
      features: ``[B, T, n_mels]`` log-mel frames (zero beyond ``lengths``).
      lengths: ``[B]`` int, valid frames per utterance.
      train: batch statistics and dropout when True (then ``batch_stats``
        must be mutable and a ``dropout`` rng given if ``dropout_rate > 0``).
    Returns:
      ``(logits [B, T', vocab_size] float32, out_lengths [B] int32)`` with
      ``T' = output_lengths(T, time_strides)``.
    """
    if not (len(self.conv_features) == len(self.conv_kernels) == len(self.conv_strides)):
      raise ValueError("conv_features, conv_kernels and conv_strides differ in length")
    if features.ndim != 3:
      raise ValueError(f"features must be [B, T, n_mels], got shape {features.shape}")
    lengths = jnp.asarray(lengths, jnp.int32)
    x = features.astype(self.dtype)[..., None]  # [B, T, F, 1]
    for i, (feat, kernel, stride) in enumerate(
      zip(self.conv_features, self.conv_kernels, self.conv_strides)
    ):
      # Fixed (stride-1 'SAME') padding: output frame j always starts at input
      # frame j * stride, whatever the padded length of the batch.
      padding = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel]
      x = nn.Conv(
        feat,
        tuple(kernel),
        strides=tuple(stride),
        padding=padding,
        use_bias=False,
        dtype=self.dtype,
        name=f"conv{i}",
      )(x)
      lengths = output_lengths(lengths, (stride[0],))
      mask = frame_mask(lengths, x.shape[1])[:, :, None, None]
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=self.bn_momentum,
        dtype=self.dtype,
        name=f"conv{i}_bn",
      )(x, mask=mask)
      x = jnp.clip(x, 0.0, self.relu_clip) * mask
    b, t, f, c = x.shape
    x = x.reshape(b, t, f * c)
    dropout = functools.partial(nn.Dropout, rate=self.dropout_rate, deterministic=not train)
    for i in range(self.rnn_layers):
      x = dropout()(x)
      gru = functools.partial(nn.GRUCell, features=self.rnn_hidden, dtype=self.dtype)
      x = nn.Bidirectional(
        nn.RNN(gru(), unroll=self.rnn_unroll),
        nn.RNN(gru(), unroll=self.rnn_unroll),
        merge_fn=lambda fwd, bwd: fwd + bwd,
        name=f"bigru{i}",
      )(x, seq_lengths=lengths)
    x = dropout()(x)
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, name="logits")(x)
    return logits.astype(jnp.float32), lengths


def count_params(params) -> int:
  """Number of parameters in a pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def from_config(cfg) -> DeepSpeech2:
  """The recogniser a config describes (configs/asr.py: config.model)."""
  m = cfg.model
  return DeepSpeech2(
    conv_features=tuple(m.conv_features),
    conv_kernels=tuple(tuple(k) for k in m.conv_kernels),
    conv_strides=tuple(tuple(s) for s in m.conv_strides),
    rnn_hidden=m.rnn_hidden,
    rnn_layers=m.rnn_layers,
    relu_clip=m.relu_clip,
    bn_momentum=m.bn_momentum,
    dropout_rate=m.dropout_rate,
    rnn_unroll=m.rnn_unroll,
    dtype=jnp.dtype(m.dtype),
  )


def init_variables(model: DeepSpeech2, cfg, rng) -> dict:
  """Variables of `model` for features of the config's shortest bucket."""
  frames = min(cfg.frame_buckets)
  return model.init(
    rng, jnp.zeros((1, frames, cfg.features.n_mels), jnp.float32), jnp.array([frames]), train=False
  )
