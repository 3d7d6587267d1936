"""The paper's configurations: all 15 of Table 1 and all 8 of Table 2 dry-run.

`launch/train.py --dry_run` traces every stage's model (`jax.eval_shape`,
nothing initialised) and loads one batch of its data. The 23 configurations
run at `runlocal` size (the small encoder of the same family, the same text
encoder kind, stages, losses and towers) on a tiny built-in set with batches
of 8; tracing a real-size tower costs seconds, so one configuration
(RN-50 + TransF) is dry-run at full size. The real-size image towers'
parameter counts are tested against torchvision in test_image_parity.py.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bmqa_jax import defaults
from bmqa_jax import sharding
from bmqa_jax.bmqa import train
from bmqa_jax.bmqa import model as bmqa
from bmqa_jax.models import image
from configs import ablation
from configs import mliq

TINY_DATA = dict(num_scenes=20, image_size=64, seed=0, audio=False)


def _shrink(c):
  """Tiny built-in data and batches; towers, losses and stages stay the config's."""
  c.data.builtin = TINY_DATA
  c.data.check_images = False  # decoding every image is tested elsewhere
  c.tokenizer.vocab_size = 120
  for s in ("pt", "ss", "st"):
    c[s].batch_size = 8
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  os.environ["BMQA_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
  return str(tmp_path_factory.mktemp("dry"))  # shared: one tokenizer for all


def _dry(c, workdir):
  logs = []
  counts = train.dry_run(_shrink(c), workdir, log=logs.append)
  return counts, "\n".join(logs)


@pytest.mark.parametrize("img", mliq.TABLE1_IMAGE)
def test_table1_configs_dry_run(img, workdir):
  """The 15 entries of Table 1 at `runlocal` size (same families, same stages)."""
  for txt in mliq.TABLE1_TEXT:
    name = defaults.TEXT_ALIASES.get(txt, txt)
    c = mliq.get_config(f"img={img},txt={txt},runlocal=True")
    assert c.paper_ref == f"table1/{img}+{txt}"
    assert c.model.text.name == name
    assert image.family(c.model.image.name) == image.family(img)
    counts, log = _dry(c, workdir)
    assert list(counts) == ["pt", "ss", "st"]
    for stage in counts.values():
      assert stage["image_encoder"] > 0 and stage["text_encoder"] > 0
    assert "batch['image']: float32 (8, 96, 96, 3)" in log


def test_real_size_dry_run(workdir):
  """Table 1's RN-50 + TransF at full size: traced (eval_shape), never initialised."""
  counts, log = _dry(mliq.get_config("img=resnet50,txt=transformer"), workdir)
  for stage in counts.values():
    assert stage["image_encoder"] == 23_508_032  # torchvision's minus the last Linear
    assert 19e6 < stage["text_encoder"] < 20e6  # 6 layers of width 512
  assert "batch['image']: float32 (8, 224, 224, 3)" in log


def test_paper_hyperparameters():
  """Sec. 5.1.3, on an MLIQ-style manifest (the built-in data shrinks PT's batch)."""
  c = mliq.get_config("img=convnext_base,txt=transformer,data=manifest,manifest=m.csv")
  assert (c.pt.epochs, c.pt.batch_size, c.pt.learning_rate, c.pt.schedule) == (
      50, 768, 1e-3, "cosine")
  assert (c.ss.epochs, c.ss.batch_size, c.ss.learning_rate, c.ss.schedule) == (
      20, 256, 4e-5, "constant")
  assert (c.st.epochs, c.st.batch_size, c.st.learning_rate) == (300, 16, 6.4e-5)
  assert (tuple(c.st.decay_boundaries_epochs), c.st.decay_factor) == ((150, 250), 0.95)
  assert c.data.kind == "manifest" and c.data.manifest == "m.csv"
  for img in ("vgg19", "resnet50", "efficientnet_b4"):
    assert mliq.get_config(f"img={img}").st.learning_rate == 8e-5
  assert mliq.get_config("img=vit_b32").st.learning_rate == 6.4e-5
  assert mliq.get_config("img=resnet18,txt=lstm").paper_ref == ""
  with pytest.raises(ValueError, match="manifest=PATH"):
    mliq.get_config("data=manifest")


def test_schedule_is_the_papers():
  """ST: lr 8e-5, ×0.95 at epochs 150 and 250 (Sec. 5.1.3)."""
  c = mliq.get_config("img=resnet50")
  sched = train.make_schedule(c.st, 10, 3000)
  np.testing.assert_allclose([sched(0), sched(1499), sched(1500), sched(2500)],
                             [8e-5, 8e-5, 8e-5 * 0.95, 8e-5 * 0.95 ** 2], rtol=1e-6)


METHOD_STAGES = {  # Table 2: stages and the towers of each
    "a": {"st": ("image",)}, "b": {"st": ("text",)},
    "c": {"ss": ("image", "text"), "st": ("image",)},
    "d": {"ss": ("image", "text"), "st": ("text",)},
    "e": {"ss": ("image", "text"), "st": ("image", "text")},
}
for _m in "fgh":
  METHOD_STAGES[_m] = {"pt": ("image", "text"), "ss": ("image", "text"),
                       "st": ("image", "text")}


@pytest.mark.parametrize("method", sorted(METHOD_STAGES))
def test_table2_configs_dry_run(method, workdir):
  stages = METHOD_STAGES[method]
  c = ablation.get_config(f"method={method},runlocal=True")
  assert c.paper_ref == f"table2/{method}"
  counts, log = _dry(c, workdir)
  assert list(counts) == list(stages)
  for stage, towers in stages.items():
    assert f"[{stage}] towers {towers}" in log
    has = counts[stage]
    assert ("image_encoder" in has) == ("image" in towers), stage
    assert ("text_encoder" in has) == ("text" in towers), stage


def test_table2_arguments():
  assert ablation.get_config("method=f").pt.loss == "classify"
  assert ablation.get_config("method=g").pt.loss == "restore"
  assert ablation.get_config("method=h").pt.loss == "info_nce"
  assert ablation.get_config("method=a").model.image.name == "resnet50"
  with pytest.raises(ValueError, match="Table 2"):
    ablation.get_config("method=z")


def test_runlocal_shrinks_to_the_same_family(workdir):
  c = mliq.get_config("img=vit_b32,txt=rnn,runlocal=True")
  assert c.model.image.name == "vit_tiny" and c.input.image_size == 96
  counts, log = _dry(c, workdir)
  assert counts["st"]["image_encoder"] < 1e6
  assert "batch['image']: float32 (8, 96, 96, 3)" in log



@pytest.mark.parametrize("name", ["quickstart", "quickstart_tiny", "mliq_runlocal",
                                  "ablation_runlocal"])
def test_quickstart_sizes_fit_the_builtin_descriptions(name):
  """The quickstart's texts fit its Transformer: the built-in descriptions (200
  scenes, seed 0) are at most 87 pieces of its 1000-piece tokenizer with BOS."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  c = {"quickstart": lambda: quickstart.get_config(),
       "quickstart_tiny": lambda: quickstart.get_config("tiny=True"),
       "mliq_runlocal": lambda: mliq.get_config("img=resnet50,txt=transformer,"
                                                "runlocal=True"),
       "ablation_runlocal": lambda: ablation.get_config("method=c,runlocal=True"),
       }[name]()
  assert c.input.max_text_len >= 87 + 4
  if c.model.text.name == "transformer":
    assert c.model.text.kwargs.max_len >= c.input.max_text_len

def test_indivisible_batch_fails_before_training(workdir):
  c = _shrink(ablation.get_config("method=a"))
  c.mesh.data = 1
  c.st.grad_accum_steps = 3
  with pytest.raises(ValueError, match="does not split into 3 microbatches"):
    train.dry_run(c, workdir, log=lambda _: None)


def _filled(shapes, seed):
  """Random arrays of the given shapes (no `init` to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), shapes)


def test_stage_modalities_hand_over_shared_towers(tmp_path):
  """Table 2 (c): SS with both towers, then an image-only ST.

  The image tower, its alignment and the temperature come from SS (parameters
  and BatchNorm statistics); the text tower is dropped; the fusion probe, whose
  input width halves, keeps its fresh initialisation and is reported.
  """
  c = ablation.get_config("method=c,runlocal=True")
  mesh = sharding.make_mesh(c)

  def stage(name, seed):
    sc = train.stage_config(c, name)
    st = train.Stage(sc, name, bmqa.from_config(sc, 120), mesh, 80,
                     "text" in sc.model.modalities)
    return st, _filled(jax.eval_shape(st.init_variables, jax.random.key(0)), seed)

  ss, ss_vars = stage("ss", 0)
  ss.state_shape = jax.eval_shape(ss.init_state, ss_vars)
  ss_state = _filled(ss.state_shape, 1)
  mngr = train.checkpoint_manager(str(tmp_path), "ss", 1)
  mngr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(ss_state)))
  mngr.wait_until_finished()
  st, st_vars = stage("st", 2)
  assert tuple(st.cfg.model.modalities) == ("image",)
  out, fresh = train._previous_weights(ss, str(tmp_path), st_vars)  # pylint: disable=protected-access
  assert fresh == ["params/fuse (shape changed)"]
  assert set(out["params"]) == {"image_encoder", "img_align", "fuse", "log_temperature"}
  for col, key in [("params", "image_encoder"), ("params", "img_align"),
                   ("params", "log_temperature"), ("batch_stats", "image_encoder")]:
    jax.tree.map(np.testing.assert_array_equal, out[col][key], ss_state[col][key])
  jax.tree.map(np.testing.assert_array_equal, out["params"]["fuse"],
               st_vars["params"]["fuse"])
  assert ss_state["params"]["fuse"]["kernel"].shape[0] == \
      2 * out["params"]["fuse"]["kernel"].shape[0]
