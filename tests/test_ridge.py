"""The closed-form ridge probe beside the heads (`config.model.ridge_weight`):
its fit, the model's mix of heads and probe, the heads' scales, and the
trainer fitting it from the feature cache, on tiny models and synthetic photos."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax import config_bases
from bmqa_jax.bmqa import model as bmqa_lib
from bmqa_jax.bmqa import ridge
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.bmqa import train
from bmqa_jax.configs import quickstart


def test_fit_recovers_a_linear_rule_and_its_leave_one_out_is_exact():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, -2, 0, 1]
  y = x @ [0.3, 0.02, 1.0, 0.0, -0.2] + 0.5 + 0.01 * rng.normal(size=60)
  p, info = ridge.fit(x, y)
  pred = ((x - p["mean"]) * p["inv_scale"]) @ p["coef"] + p["bias"]
  assert np.sqrt(np.mean((pred - y) ** 2)) < 0.02
  assert info["alpha"] == min(ridge.ALPHAS)  # little noise: the least penalty
  # The closed-form leave-one-out error is that of 60 refits without one photo
  # (same penalty, the features standardised by the full split, as in `fit`).
  z = (x - p["mean"]) * p["inv_scale"]
  a, errs = info["alpha"], []
  for i in range(len(y)):
    keep = np.arange(len(y)) != i
    zk, yk = z[keep], y[keep]
    mu_z, mu_y = zk.mean(0), yk.mean()
    zc = zk - mu_z
    coef = zc.T @ np.linalg.solve(zc @ zc.T + a * np.eye(len(yk)), yk - mu_y)
    errs.append(y[i] - ((z[i] - mu_z) @ coef + mu_y))
  np.testing.assert_allclose(info["loo_rmse"], np.sqrt(np.mean(np.square(errs))), rtol=1e-3)


def test_a_constant_feature_is_ignored():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.normal(size=(30, 3)), np.zeros((30, 1))], 1)
  y = x[:, 0] + 0.1 * rng.normal(size=30)
  p, _ = ridge.fit(x, y)
  assert p["inv_scale"][3] == 0 and np.isfinite(p["inv_scale"].astype(np.float16)).all()
  unseen = np.array([[0.0, 0.0, 0.0, 1e3]])
  np.testing.assert_allclose(
    ((unseen - p["mean"]) * p["inv_scale"]) @ p["coef"] + p["bias"],
    ((unseen[:, :3] - p["mean"][:3]) * p["inv_scale"][:3]) @ p["coef"][:3] + p["bias"],
  )


def test_fit_names_bad_input():
  with pytest.raises(ValueError, match="non-finite"):
    ridge.fit(np.array([[0.0], [np.nan], [1.0]]), np.zeros(3))
  with pytest.raises(ValueError, match="n ≥ 3"):
    ridge.fit(np.zeros((2, 4)), np.zeros(2))


def test_kernel_fit_learns_a_curved_rule_and_its_leave_one_out_is_exact():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(120, 6)) * [1, 3, 1, 1, 0.5, 2]
  y = np.sin(2 * x[:, 0]) + 0.1 * x[:, 1] ** 2 + 0.01 * rng.normal(size=120)
  test = rng.normal(size=(200, 6)) * [1, 3, 1, 1, 0.5, 2]
  want = np.sin(2 * test[:, 0]) + 0.1 * test[:, 1] ** 2
  p, info = ridge.fit_kernel(x, y, support=128, dims=6)
  assert p["support"].shape == (128, 6) and not p["dual"][120:].any()  # zero-padded
  z = ((test - p["mean"]) * p["inv_scale"]) @ p["proj"]
  d2 = ((z[:, None] - p["support"][None]) ** 2).sum(-1)
  pred = np.exp(-p["gamma"] * d2) @ p["dual"] + p["bias"]
  lin, _ = ridge.fit(x, y)
  lin_pred = ((test - lin["mean"]) * lin["inv_scale"]) @ lin["coef"] + lin["bias"]
  err = lambda q: np.sqrt(np.mean((q - want) ** 2))
  assert err(pred) < 0.5 * err(lin_pred)  # the kernel reads the curve a line cannot
  # The closed-form leave-one-out error is that of 120 refits without one
  # image (same penalty, kernel and projection, as `fit_kernel` uses).
  u = ((x - p["mean"]) * p["inv_scale"]) @ p["proj"]
  k = np.exp(-p["gamma"] * ((u[:, None] - u[None]) ** 2).sum(-1))
  a, errs = info["alpha"], []
  for i in range(len(y)):
    keep = np.arange(len(y)) != i
    yk = y[keep]
    dual = np.linalg.solve(k[np.ix_(keep, keep)] + a * np.eye(len(yk)), yk - yk.mean())
    errs.append(y[i] - (k[i, keep] @ dual + yk.mean()))
  np.testing.assert_allclose(info["loo_rmse"], np.sqrt(np.mean(np.square(errs))), rtol=1e-3)


def test_kernel_fit_names_what_it_cannot_hold():
  x, y = np.random.default_rng(3).normal(size=(10, 4)), np.arange(10.0)
  with pytest.raises(ValueError, match="ridge_support"):
    ridge.fit_kernel(x, y, support=8, dims=4)
  with pytest.raises(ValueError, match="non-finite"):
    ridge.fit_kernel(np.where(x > 1, np.inf, x), y, support=16, dims=4)


def test_spread_adds_the_spread_of_each_scales_cell_means():
  rng = np.random.default_rng(4)
  # One level, 2 scales, 3 channels: per scale (means, stds) as tower_features.
  m = rng.normal(size=(2, 16, 2 * 2 * 3)).astype(np.float32)
  got = np.asarray(ridge.spread([m], num_scales=2))
  means = np.concatenate([m[..., 0:3], m[..., 6:9]], -1)
  np.testing.assert_allclose(got, np.concatenate([m.mean(1), means.std(1)], -1), rtol=1e-5)


def _config(**model):
  c = quickstart.get_config("tiny=True,modalities=image")
  c.model.image = dict(
    name="resnet_tiny",
    init="none",
    kwargs={},
    levels=(1, 3),
    token_grid=2,
    scales=(1, 2),
    head_scales=(1,),
  )
  c.input.update(mode="native", native_crop=128, eval_grid=(1, 1))
  c.model.ensemble = 2
  c.model.update(model)
  return c


def test_score_mixes_the_heads_and_the_probe_and_heads_read_their_scales():
  c = _config(ridge_weight=0.25)
  model = bmqa_lib.from_config(c, None)
  x = jax.random.normal(jax.random.key(0), (3, 128, 128, 3))
  v = model.init(jax.random.key(1), x)
  feats = model.apply(v, x, method=model.tower_features)
  assert [f.shape[-1] for f in feats] == [128, 512]  # 2 scales × (mean, std) × C
  params = dict(
    v["params"],
    ridge=dict(
      mean=jnp.zeros(640),
      inv_scale=jnp.ones(640),
      coef=jnp.arange(640.0) / 1e3,
      bias=jnp.float32(0.5),
    ),
  )
  out = model.apply(dict(v, params=params), None, image_features=feats)
  want_ridge = ridge.pooled(feats) @ (jnp.arange(640.0) / 1e3) + 0.5
  np.testing.assert_allclose(out["ridge_score"], want_ridge, rtol=1e-5)
  np.testing.assert_allclose(
    out["score"], 0.75 * out["member_scores"].mean(1) + 0.25 * want_ridge, rtol=1e-5, atol=1e-6
  )
  # The heads read the native scale's channels only: the coarse ones do not
  # move their scores.
  coarse = [f.at[..., f.shape[-1] // 2 :].add(3.0) for f in feats]
  moved = model.apply(dict(v, params=params), None, image_features=coarse)
  np.testing.assert_allclose(moved["member_scores"], out["member_scores"], rtol=1e-6)
  assert not np.allclose(moved["ridge_score"], out["ridge_score"])
  # The kernel probe in the model: its score is the probe's formula on the
  # spread features of the maps, mixed with the heads by the same weight.
  ck = _config(ridge_weight=0.25, ridge_kernel="rbf", ridge_support=8, ridge_dims=4)
  mk = bmqa_lib.from_config(ck, None)
  vk = mk.init(jax.random.key(1), x)
  xs = np.asarray(ridge.spread(feats, 2))
  kp, _ = ridge.fit_kernel(np.concatenate([xs, xs + 0.1]), np.arange(6.0), 8, 4)
  outk = mk.apply(dict(vk, params=dict(vk["params"], ridge=kp)), None, image_features=feats)
  u = ((xs - kp["mean"]) * kp["inv_scale"]) @ kp["proj"]
  want_k = np.exp(-kp["gamma"] * ((u[:, None] - kp["support"][None]) ** 2).sum(-1)) @ kp["dual"]
  np.testing.assert_allclose(outk["ridge_score"], want_k + kp["bias"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    outk["score"], 0.75 * outk["member_scores"].mean(1) + 0.25 * outk["ridge_score"], rtol=1e-5
  )
  with pytest.raises(ValueError, match="head_scales"):
    c2 = _config()
    c2.model.image.head_scales = (4,)
    m2 = bmqa_lib.from_config(c2, None)
    m2.init(jax.random.key(1), x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  data = str(tmp_path_factory.mktemp("data"))
  os.environ["BMQA_DATA_DIR"] = data
  c = _config(ridge_weight=0.5)
  c.data.builtin_dir = os.path.join(data, "builtin")
  c.st.update(epochs=2, trainable="^(?!image_encoder/).*")
  work = str(tmp_path_factory.mktemp("ridge"))
  logs = []
  res = train.train_and_evaluate(c, work, log=logs.append, progress=False)
  return dict(cfg=c, work=work, logs=logs, res=res)


def test_trainer_fits_the_probe_from_the_cache_and_keeps_it(trained):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from bmqa_jax.train_lib import checkpoint  # pylint: disable=g-import-not-at-top

  logs = "\n".join(trained["logs"])
  assert "ridge probe on 640 pooled features of" in logs
  mngr = checkpoint.manager(os.path.join(trained["work"], "checkpoints", "st"), 2)
  st = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
    "state"
  ]
  r = st["params"]["ridge"]
  assert float(np.abs(np.asarray(r["coef"])).max()) > 0  # fitted, not the init
  # The optimiser never moved it (weight decay included): it is the fit of the
  # training split's cached features.
  from bmqa_jax.bmqa import feature_cache  # pylint: disable=g-import-not-at-top
  from bmqa_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  c = config_bases.complete(trained["cfg"])
  data = train.load_data(c, trained["work"], ["st"], print)
  model = bmqa_lib.from_config(c, None)
  plan = stage_lib.for_data(c, "st", data, train.sharding.make_mesh(c))
  weights = {"params": st["params"], "batch_stats": st["batch_stats"]}
  cache = feature_cache.build(
    model,
    weights,
    data.records("train", c),
    c,
    pipeline.from_config(c),
    trained["work"],
    plan.mesh,
    print,
  )
  x = np.asarray(ridge.pooled([a[:, 0] for a in cache.levels]))
  want, _ = ridge.fit(x, np.array([s.mos for s in data.splits["train"]]))
  np.testing.assert_allclose(np.asarray(r["coef"]), want["coef"], rtol=1e-4, atol=1e-6)
  assert all(lab == "frozen" for lab in jax.tree.leaves(plan.labels["ridge"]))
  assert np.isfinite(trained["res"]["st"]["srcc"])


def test_ridge_needs_the_feature_cache(tmp_path):
  c = _config(ridge_weight=0.5)
  c.data.builtin_dir = os.path.join(os.environ.get("BMQA_DATA_DIR", str(tmp_path)), "builtin")
  c.st.update(epochs=1, trainable="^(?!image_encoder/).*", feature_cache=False)
  with pytest.raises(ValueError, match="feature cache"):
    train.train_and_evaluate(c, str(tmp_path / "w"), log=lambda _: None)
