"""The configs in `configs/`: their `key=value` arguments, and the paper's
configurations, all 15 of Table 1 and all 8 of Table 2, dry-run.

Every config parses its argument with `bmqa_jax.config_args.parse_arg`; the
parser's rules and each config's documented arguments are tested first.
The configs are imported as `bmqa_jax.configs` (the repository's `configs/`
folder, installed inside the package), without touching `sys.path`; the
commands' `--config` flag (bmqa_jax/cli/config_flag.py) loads them by name and
by file, from any folder, and names every mistake.

`launch/train.py --dry_run` traces every stage's model (`jax.eval_shape`,
nothing initialised) and loads one batch of its data. The 23 configurations
run at `runlocal` size (the small encoder of the same family, the same text
encoder kind, stages, losses and towers) on a tiny built-in set with batches
of 8; tracing a real-size tower costs seconds, so one configuration
(RN-50 + TransF) is dry-run at full size. The real-size image towers'
parameter counts are tested against torchvision in test_image_parity.py.
"""

import doctest
import importlib
import json
import os
import re
import subprocess
import sys

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bmqa_jax import config_args
from bmqa_jax import defaults
from bmqa_jax import sharding
from bmqa_jax.bmqa import train
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import optim
from bmqa_jax.models import image
from bmqa_jax import configs
from bmqa_jax.cli import config_flag
from bmqa_jax.configs import ablation
from bmqa_jax.configs import mliq

TINY_DATA = dict(num_scenes=20, image_size=64, seed=0, audio=False)
CONFIGS_DIR = os.path.dirname(os.path.abspath(configs.__file__))
CONFIG_NAMES = sorted(
  f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py") and not f.startswith("_")
)


# --- config_args.parse_arg ---------------------------------------------------

SPEC = dict(name="resnet50", runlocal=False, steps=300, lr=8e-5, init=None, epochs=(None, float))


def test_parse_arg_defaults():
  for arg in (None, "", " ", ",,"):
    a = config_args.parse_arg(arg, **SPEC)
    assert a.to_dict() == dict(
      name="resnet50", runlocal=False, steps=300, lr=8e-5, init=None, epochs=None
    )


def test_parse_arg_types():
  a = config_args.parse_arg(
    "name=vit_tiny, runlocal=True,steps=20,lr=1e-3,init=/w=x,epochs=3", **SPEC
  )
  assert a.to_dict() == dict(
    name="vit_tiny", runlocal=True, steps=20, lr=1e-3, init="/w=x", epochs=3.0
  )
  assert type(a.steps) is int and type(a.lr) is float and type(a.epochs) is float
  assert config_args.parse_arg("lr=3", **SPEC).lr == 3.0
  assert type(config_args.parse_arg("lr=3", **SPEC).lr) is float
  assert config_args.parse_arg("runlocal=False", runlocal=True).runlocal is False
  assert config_args.parse_arg("init=", **SPEC).init == ""  # None means str
  assert config_args.parse_arg("flag=True", flag=(None, bool)).flag is True
  assert config_args.parse_arg("", flag=(None, bool)).flag is None


def test_parse_arg_result_is_locked():
  a = config_args.parse_arg("steps=3", **SPEC)
  assert isinstance(a, ml_collections.ConfigDict)
  with pytest.raises(AttributeError):
    a.runlcoal  # pylint: disable=pointless-statement
  with pytest.raises(AttributeError):
    a.runlcoal = True


@pytest.mark.parametrize("value", ["false", "true", "1", "0", "yes", "no", "TRUE", "", "on"])
def test_parse_arg_bool_is_exactly_true_or_false(value):
  with pytest.raises(ValueError, match=f"runlocal={value!r}: expected True or False"):
    config_args.parse_arg(f"runlocal={value}", **SPEC)


def test_parse_arg_unknown_key_lists_the_known_ones():
  with pytest.raises(ValueError) as e:
    config_args.parse_arg("steps=3,runlcoal=True", **SPEC)
  assert "'runlcoal'" in str(e.value)
  assert "known keys: epochs, init, lr, name, runlocal, steps" in str(e.value)


@pytest.mark.parametrize(
  "arg,match",
  [
    ("steps=1.5", "steps='1.5': expected int"),
    ("steps=many", "steps='many': expected int"),
    ("lr=fast", "lr='fast': expected float"),
    ("epochs=x", "epochs='x': expected float"),
    ("steps=3,steps=4", "'steps' is given twice"),
    ("runlocal", "'runlocal' is not key=value"),
    ("steps=3,tiny", "'tiny' is not key=value"),
  ],
)
def test_parse_arg_rejects(arg, match):
  with pytest.raises(ValueError, match=match):
    config_args.parse_arg(arg, **SPEC)


def test_parse_arg_docstring_example():
  assert doctest.testmod(config_args).failed == 0


def test_parse_arg_rejects_untyped_defaults():
  with pytest.raises(TypeError, match="grid"):
    config_args.parse_arg("", grid=(1, 1))


# --- every config's arguments -------------------------------------------------

# The spellings the configs' docstrings, README, launch scripts, colabs and
# tests use, and every documented key.
DOCUMENTED = {
  "quickstart": [
    "",
    "modalities=image",
    "modalities=image+text",
    "tiny=True",
    "tiny=False",
    "tiny=True,modalities=image",
    "modalities=image,tiny=True",
    "img=efficientnet_lite0",
    "img=resnet_tiny,init=none",
    "init=imagenet",
  ],
  "mliq": [
    "",
    "img=convnext_base",
    "img=resnet50,txt=bow",
    "img=vit_b32,txt=rnn,runlocal=True",
    "img=resnet18,txt=lstm",
    "img=convnext_base,txt=transformer,data=manifest,"
    "manifest=/data/mliq/manifest.csv,pretrain_manifest=/data/coco/captions.csv",
    "img=vit_b32,txt=transformer,data=manifest,manifest=/m/manifest.csv",
    "data=builtin,init=/w,runlocal=False",
  ],
  "ablation": [
    "",
    "method=a",
    "method=e",
    "method=f",
    "method=c,runlocal=True",
    "method=h,data=manifest,manifest=/mnt/nfs/mliq/manifest.csv",
    "method=f,data=manifest,manifest=m.csv,pretrain_manifest=p.csv",
    "method=b,init=/w,runlocal=False",
  ],
  "biq2021": [
    "",
    "recipe=probe",
    "recipe=lpft",
    "recipe=finetune",
    "ensemble=1",
    "recipe=lpft,ft_epochs=2,ft_lr=1e-5",
    "manifest=m.csv,img=efficientnet_lite0,init=none,crop=256,grid=2,"
    "epochs=3,batch=8,lr=1e-3,levels=none,token_grid=2,ensemble=1",
    "levels=2.4",
    "scales=1",
    "scales=1.2",
    "scales=1,ridge=0",
    "head_scales=1.2",
    "ridge=0.3",
    "kernel=linear",
    "kernel=linear,ridge=0.5",
    "recipe=finetune,size=96,epochs=2,lr=1e-3,trainable=^img_align",
  ],
  "dark4k": ["", "captioner=runs/captioner"],
  "asr": [
    "",
    "manifest=DATA/manifest.csv",
    "runlocal=True",
    "runlocal=False",
    "manifest=M.csv,runlocal=True,steps=30",
    "steps=100",
  ],
  "captioner": [
    "",
    "manifest=DATA/m.csv",
    "runlocal=True",
    "runlocal=True,steps=8",
    "encoder=resnet18,runlocal=False,steps=10",
  ],
}


def _config(name, arg=None):
  return importlib.import_module(f"bmqa_jax.configs.{name}").get_config(arg)


def test_every_config_is_covered():
  assert sorted(DOCUMENTED) == CONFIG_NAMES


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in DOCUMENTED.items() for a in args])
def test_config_accepts_its_documented_arguments(name, arg):
  keys = _documented_keys(name)
  for item in filter(None, arg.split(",")):
    assert item.split("=")[0] in keys, (name, item)  # in its Arguments section
  assert isinstance(_config(name, arg), ml_collections.ConfigDict)


def _documented_keys(name: str) -> set[str]:
  """The `key=` spellings of the Arguments section of a config's docstring
  (not `--config.x=`, `--config=` or the generic `key=value`)."""
  doc = importlib.import_module(f"bmqa_jax.configs.{name}").__doc__
  assert "Arguments" in doc, name
  section = doc[doc.index("Arguments") :]
  return set(re.findall(r"(?<![\w.-])`*([a-z_]+)=", section)) - {"key"}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_documented_argument_is_tried(name):
  """Each key a config documents is among the spellings tried above."""
  tried = {item.split("=")[0] for arg in DOCUMENTED[name] for item in filter(None, arg.split(","))}
  assert tried == _documented_keys(name)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_rejects_unknown_keys_and_loose_bools(name):
  with pytest.raises(ValueError, match="unknown config argument 'nosuchkey'"):
    _config(name, "nosuchkey=1")
  with pytest.raises(ValueError, match="is not key=value"):
    _config(name, "bareword")
  bools = {
    "quickstart": "tiny",
    "mliq": "runlocal",
    "ablation": "runlocal",
    "asr": "runlocal",
    "captioner": "runlocal",
  }
  if name in bools:
    for value in ("false", "true", "1", "yes"):
      with pytest.raises(ValueError, match="expected True or False"):
        _config(name, f"{bools[name]}={value}")


def test_config_argument_values():
  assert _config("quickstart", "modalities=image").stages == "st"
  with pytest.raises(ValueError, match="modalities='text'"):
    _config("quickstart", "modalities=text")
  assert _config("quickstart", "img=resnet_tiny,init=/w").model.image.init == "/w"
  assert _config("mliq", "runlocal=False").model.image.name == "resnet50"
  assert _config("mliq", "runlocal=True").model.image.name == "resnet_tiny"
  c = _config("biq2021", "recipe=finetune")
  assert (c.st.epochs, c.st.learning_rate, c.input.image_size) == (5.0, 5e-4, 128)
  c = _config("biq2021", "epochs=3,lr=1e-3,levels=2.4,grid=2")
  assert (c.st.epochs, c.st.learning_rate) == (3.0, 1e-3)
  assert tuple(c.model.image.levels) == (2, 4) and tuple(c.input.eval_grid) == (2, 2)
  with pytest.raises(ValueError, match="recipe='fast'"):
    _config("biq2021", "recipe=fast")
  for name, full, local in (("asr", 300, 40), ("captioner", 1500, 40)):
    assert _config(name).num_steps == full
    assert _config(name, "runlocal=True").num_steps == local
    assert _config(name, "runlocal=True,steps=7").num_steps == 7
    c = _config(name, "manifest=m.csv")
    assert (c.data.kind, c.data.manifest) == ("manifest", "m.csv")
    assert _config(name).data.kind == "builtin"


def test_dark4k_is_the_quickstart_model():
  quick = _config("quickstart").to_dict()
  dark = _config("dark4k", "captioner=/runs/cap").to_dict()
  assert dark["data"].pop("captioner_workdir") == "/runs/cap"
  quick["data"].pop("captioner_workdir")
  assert dark == quick


@pytest.mark.parametrize("name,b2", [("asr", 0.98), ("captioner", 0.999)])
def test_step_trainers_optimizer_and_mesh(name, b2):
  c = _config(name)
  assert c.optimizer.to_dict() == dict(
    optimizer="adamw",
    schedule="cosine",
    learning_rate=2e-3,
    warmup_steps=50,
    final_lr_fraction=0.05,
    adam_b1=0.9,
    adam_b2=b2,
    weight_decay=1e-4,
    grad_clip_norm=5.0,
    momentum=0.0,
  )
  assert c.mesh.to_dict() == dict(data=-1, model=1, shard_min_size=2**18)


def test_shared_data_blocks():
  assert defaults.builtin_data().to_dict() == dict(
    num_scenes=200, image_size=160, seed=0, audio=True
  )
  assert defaults.builtin_data(tiny=True).to_dict() == TINY_DATA
  assert _config("quickstart", "tiny=True").data.builtin.to_dict() == TINY_DATA
  assert _config("captioner", "runlocal=True").data.builtin.to_dict() == TINY_DATA
  for name in ("quickstart", "mliq", "asr", "captioner"):
    assert _config(name).data.builtin == defaults.builtin_data(), name
  assert not hasattr(defaults, "parse_args")


SHOW_CONFIG = """\
from absl import app
from bmqa_jax.cli import config_flag
_CONFIG = config_flag.DEFINE_config()
def main(_):
  print("CONFIG " + _CONFIG.value.to_json())
app.run(main)
"""


def _show(tmp_path, *args):
  """A command's --config, parsed in a fresh process in another folder."""
  script = tmp_path / "show_config.py"
  script.write_text(SHOW_CONFIG)
  root = os.path.dirname(os.path.dirname(os.path.abspath(config_flag.__file__)))
  env = dict(os.environ, PYTHONPATH=os.path.dirname(root))
  return subprocess.run(
    [sys.executable, str(script), *args],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def _shown(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("CONFIG ")][-1]
  return json.loads(line[len("CONFIG ") :])


def test_config_by_name_and_by_file_from_another_folder(tmp_path):
  """`--config=NAME[:args]` finds the packaged config from any folder, and a
  file still loads; dark4k (which imports the quickstart) both ways."""
  assert config_flag.names() == CONFIG_NAMES
  by_name = _shown(_show(tmp_path, "--config=dark4k:captioner=/runs/cap"))
  by_file = _shown(
    _show(tmp_path, "--config=" + os.path.join(CONFIGS_DIR, "dark4k.py") + ":captioner=/runs/cap")
  )
  assert by_name == by_file
  assert by_name["data"]["captioner_workdir"] == "/runs/cap"
  assert by_name["model"] == json.loads(_config("quickstart").to_json())["model"]
  c = _shown(_show(tmp_path, "--config=quickstart:tiny=True", "--config.st.epochs=3"))
  assert c["st"]["epochs"] == 3 and c["data"]["builtin"] == TINY_DATA


@pytest.mark.parametrize(
  "args,message",
  [
    (
      ["--config=quickstar"],
      "--config=quickstar: no packaged config 'quickstar' "
      "(did you mean 'quickstart'?); the names are ablation, asr, biq2021, "
      "captioner, dark4k, mliq, quickstart, or give a file (path/to/config.py)",
    ),
    (
      ["--config=configs/nope.py"],
      "--config=configs/nope.py: no config file "
      "'configs/nope.py' (in {cwd}); the packaged configs go by name: ablation, asr, "
      "biq2021, captioner, dark4k, mliq, quickstart",
    ),
    (
      ["--config=quickstart:tiyn=True"],
      "--config=quickstart:tiyn=True: unknown "
      "config argument 'tiyn' (known keys: img, init, modalities, tiny)",
    ),
    (
      ["--config=quickstart", "--config.st.learnig_rate=1"],
      "--config.st.learnig_rate: "
      "config.st has no field 'learnig_rate'; did you mean 'learning_rate'?",
    ),
    (
      ["--config=quickstart", "--config.stt.epochs=1"],
      "--config.stt.epochs: config has no field 'stt'; did you mean 'st'?",
    ),
    (
      ["--config=quickstart", "--config.seed.x=1"],
      "--config.seed.x: config.seed is a value, not a group of fields",
    ),
  ],
)
def test_config_mistakes_are_named(tmp_path, args, message):
  """Each mistake is one absl flags error naming it (today's ml_collections
  gives a 53-line trace ending in a garbled KeyError for the misspelt field)."""
  fv = flags.FlagValues()
  config_flag.DEFINE_config(flag_values=fv)
  with pytest.MonkeyPatch.context() as mp:
    mp.chdir(tmp_path)  # a relative file is looked up from where the command runs
    mp.setattr(sys, "argv", ["prog", *args])
    with pytest.raises(config_flag.ConfigError) as e:
      fv(["prog", *args])
  assert str(e.value) == message.format(cwd=tmp_path)


def test_config_flags_reports_a_bad_argument():
  """The same file loading in this process: a bad argument stops the parse."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv)
  path = os.path.join(CONFIGS_DIR, "quickstart.py")
  fv(["prog", f"--config={path}:tiny=True,modalities=image"])
  assert fv.config.stages == "st" and fv.config.data.builtin.num_scenes == 20
  fv.unparse_flags()
  with pytest.raises(flags.IllegalFlagValueError, match="expected True or False"):
    fv(["prog", f"--config={path}:tiny=true"])


# --- the paper's configurations ---------------------------------------------


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
  return str(tmp_path_factory.mktemp("dry"))  # shared: one tokenizer per text set


def _dry(c, workdir):
  # The tokenizer is trained on the training descriptions, plus the caption
  # pairs when a stage pretrains: one workdir for each of the two text sets.
  names = [s.strip() for s in c.stages.split(",") if s.strip()]
  pt = any(c[n].data == "pretrain" for n in names)
  workdir = os.path.join(workdir, "with_captions" if pt else "descriptions_only")
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
    50,
    768,
    1e-3,
    "cosine",
  )
  assert (c.ss.epochs, c.ss.batch_size, c.ss.learning_rate, c.ss.schedule) == (
    20,
    256,
    4e-5,
    "constant",
  )
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
  sched = optim.make_schedule(c.st, 3000, int(round(c.st.warmup_epochs * 10)), 10)
  np.testing.assert_allclose(
    [sched(0), sched(1499), sched(1500), sched(2500)],
    [8e-5, 8e-5, 8e-5 * 0.95, 8e-5 * 0.95**2],
    rtol=1e-6,
  )


METHOD_STAGES = {  # Table 2: stages and the towers of each
  "a": {"st": ("image",)},
  "b": {"st": ("text",)},
  "c": {"ss": ("image", "text"), "st": ("image",)},
  "d": {"ss": ("image", "text"), "st": ("text",)},
  "e": {"ss": ("image", "text"), "st": ("image", "text")},
}
for _m in "fgh":
  METHOD_STAGES[_m] = {"pt": ("image", "text"), "ss": ("image", "text"), "st": ("image", "text")}


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


@pytest.mark.parametrize(
  "name", ["quickstart", "quickstart_tiny", "mliq_runlocal", "ablation_runlocal"]
)
def test_quickstart_sizes_fit_the_builtin_descriptions(name):
  """The quickstart's texts fit its Transformer: the built-in descriptions (200
  scenes, seed 0) are at most 87 pieces of its 1000-piece tokenizer with BOS."""
  from bmqa_jax.configs import quickstart  # pylint: disable=g-import-not-at-top

  c = {
    "quickstart": lambda: quickstart.get_config(),
    "quickstart_tiny": lambda: quickstart.get_config("tiny=True"),
    "mliq_runlocal": lambda: mliq.get_config("img=resnet50,txt=transformer,runlocal=True"),
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
    st = stage_lib.make_stage(c, name, mesh, 80, 120)
    return st, _filled(st.abstract_variables, seed)

  ss, ss_vars = stage("ss", 0)
  ss_state = _filled(ss.abstract_state, 1)
  mngr = checkpoint.manager(os.path.join(str(tmp_path), "checkpoints", "ss"), 1)
  mngr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(ss_state)))
  mngr.wait_until_finished()
  st, st_vars = stage("st", 2)
  assert tuple(st.cfg.model.modalities) == ("image",)
  out, fresh = train.previous_weights(ss, str(tmp_path), st_vars)
  assert fresh == ["params/fuse (shape changed)"]
  assert set(out["params"]) == {"image_encoder", "img_align", "fuse", "log_temperature"}
  for col, key in [
    ("params", "image_encoder"),
    ("params", "img_align"),
    ("params", "log_temperature"),
    ("batch_stats", "image_encoder"),
  ]:
    jax.tree.map(np.testing.assert_array_equal, out[col][key], ss_state[col][key])
  jax.tree.map(np.testing.assert_array_equal, out["params"]["fuse"], st_vars["params"]["fuse"])
  assert (
    ss_state["params"]["fuse"]["kernel"].shape[0] == 2 * out["params"]["fuse"]["kernel"].shape[0]
  )
