"""Text encoders F_qsd (Eq. 3–4): shapes, padding, and GRU/LSTM parity with torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax.models import text

VOCAB = 40
SMALL = {
  "bow": dict(width=16, depth=2, mlp_dim=24),
  "gru": dict(width=8, depth=2, embed_dim=12),
  "lstm": dict(width=8, depth=1, embed_dim=12),
  "transformer": dict(width=16, depth=1, num_heads=2, mlp_dim=32, max_len=8),
}
# Right-padded rows of lengths 8, 5, 1 and 3.
IDS = np.array(
  [
    [2, 5, 6, 7, 8, 9, 10, 11],
    [2, 12, 13, 14, 15, 0, 0, 0],
    [2, 0, 0, 0, 0, 0, 0, 0],
    [2, 30, 31, 0, 0, 0, 0, 0],
  ],
  np.int32,
)
MASK = IDS != 0


def test_registry_names():
  assert text.names() == ["bow", "gru", "lstm", "transformer"]
  with pytest.raises(KeyError, match="unknown text encoder"):
    text.create("rnn2", VOCAB)


@pytest.mark.parametrize("name", ["bow", "gru", "lstm", "transformer"])
def test_shapes_and_padding(name):
  kw = dict(SMALL[name], bidirectional=True) if name == "lstm" else SMALL[name]
  enc = text.create(name, VOCAB, **kw)
  v = enc.init(jax.random.key(0), IDS, MASK)
  # One batch (one compilation): the rows, the rows with other ids at padded
  # positions, the rows with one word of row 1 changed.
  ids2 = np.where(MASK, IDS, np.arange(IDS.size).reshape(IDS.shape) % VOCAB)
  ids3 = IDS.copy()
  ids3[1, 2] = 20
  out = enc.apply(v, np.concatenate([IDS, ids2, ids3]), np.tile(MASK, (3, 1)))
  width = kw["width"] * (2 if kw.get("bidirectional") else 1)
  assert out["tokens"].shape == (12, 8, width) and out["pooled"].shape == (12, width)
  assert np.all(np.asarray(out["tokens"])[~np.tile(MASK, (3, 1))] == 0)
  base, padded, changed = (jax.tree.map(lambda a, i=i: a[4 * i : 4 * i + 4], out) for i in range(3))
  for k in ("tokens", "pooled"):  # padded ids change nothing
    np.testing.assert_allclose(padded[k], base[k], atol=1e-5)
  # A word changes its own sentence only.
  assert not np.allclose(changed["pooled"][1], base["pooled"][1], atol=1e-4)
  np.testing.assert_allclose(
    np.delete(changed["pooled"], 1, 0), np.delete(base["pooled"], 1, 0), atol=1e-5
  )


def test_bow_ignores_word_order():
  enc = text.create("bow", VOCAB, **SMALL["bow"])
  v = enc.init(jax.random.key(0), IDS, MASK)
  perm = IDS.copy()
  perm[0, 1:] = perm[0, 1:][::-1]
  np.testing.assert_allclose(
    enc.apply(v, perm, MASK)["pooled"][0], enc.apply(v, IDS, MASK)["pooled"][0], atol=1e-5
  )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_combination_is_eq4(reduction):
  lc = text.LinearCombination(width=3, reduction=reduction)
  x = jax.random.normal(jax.random.key(1), (4, 8, 5))
  v = lc.init(jax.random.key(2), x, MASK)
  p = v["params"]["lc"]
  xm = np.asarray(x) * MASK[..., None]
  bag = xm.sum(1) / (MASK.sum(1, keepdims=True) if reduction == "mean" else 1)
  want = bag @ np.asarray(p["kernel"]) + p["bias"]
  np.testing.assert_allclose(lc.apply(v, x, MASK), want, rtol=1e-5, atol=1e-6)


def _torch_rnn_params(rnn, cell: str, depth: int, bidirectional: bool) -> dict:
  """Flax parameters of `RecurrentEncoder` from a torch nn.GRU / nn.LSTM.

  GRU: torch gates (r, z, n); flax has no hidden-side bias on r and z, so
  b_ir + b_hr and b_iz + b_hz go to the input side; b_hn stays inside r ⊙ (·).
  LSTM: torch gates (i, f, g, o); flax keeps one bias per gate = b_ih + b_hh.
  """
  sd = {k: v.detach().numpy().astype(np.float64) for k, v in rnn.state_dict().items()}
  out = {}
  gates = "rzn" if cell == "gru" else "ifgo"
  for layer in range(depth):
    dirs = [("", "fwd")] + ([("_reverse", "bwd")] if bidirectional else [])
    for suffix, direction in dirs:
      w_ih = np.split(sd[f"weight_ih_l{layer}{suffix}"], len(gates))
      w_hh = np.split(sd[f"weight_hh_l{layer}{suffix}"], len(gates))
      b_ih = np.split(sd[f"bias_ih_l{layer}{suffix}"], len(gates))
      b_hh = np.split(sd[f"bias_hh_l{layer}{suffix}"], len(gates))
      p = {}
      for g, wi, wh, bi, bh in zip(gates, w_ih, w_hh, b_ih, b_hh):
        if cell == "gru":
          p[f"i{g}"] = {"kernel": wi.T, "bias": bi + bh if g != "n" else bi}
          p[f"h{g}"] = {"kernel": wh.T} | ({"bias": bh} if g == "n" else {})
        else:
          p[f"i{g}"] = {"kernel": wi.T}
          p[f"h{g}"] = {"kernel": wh.T, "bias": bi + bh}
      out[f"layer{layer}_{direction}"] = p
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), out)


@pytest.mark.parametrize("cell,depth,bidirectional", [("gru", 2, True), ("lstm", 2, True)])
def test_recurrent_matches_torch(cell, depth, bidirectional):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  emb, hid = 6, 5
  rnn = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)(
    emb, hid, num_layers=depth, bidirectional=bidirectional, batch_first=True
  )
  with torch.no_grad():  # non-zero biases everywhere
    for name, p in rnn.named_parameters():
      if name.startswith("bias"):
        p.uniform_(-0.5, 0.5)
  enc = text.create(cell, VOCAB, width=hid, depth=depth, embed_dim=emb, bidirectional=bidirectional)
  v = enc.init(jax.random.key(0), IDS, MASK)
  params = dict(v["params"], **_torch_rnn_params(rnn, cell, depth, bidirectional))
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, v["params"])
  out = enc.apply({"params": params}, IDS, MASK)

  x = torch.from_numpy(np.asarray(params["embed"]["embedding"])[IDS])
  lengths = torch.from_numpy(MASK.sum(1))
  packed = torch.nn.utils.rnn.pack_padded_sequence(
    x, lengths, batch_first=True, enforce_sorted=False
  )
  with torch.no_grad():
    y, _ = rnn(packed)
  y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=IDS.shape[1])
  np.testing.assert_allclose(out["tokens"], y.numpy(), atol=1e-5)
