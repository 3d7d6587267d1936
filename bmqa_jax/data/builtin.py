"""The built-in MLIQ-like dataset: real photos, simulated low-light captures, MOS, QSD.

`build(out_dir, ...)` writes, deterministically from a seed:

- `images/<scene>_<device>.jpg`: five captures per scene, one per simulated device
  (`lowlight.DEVICES`), each at its own scene light level;
- `clean/<scene>.jpg`: the well-lit scene, for caption pretraining (stage PT);
- `audio/<scene>_<device>.wav`: the spoken description (16 kHz) when a speech
  synthesiser is installed (`bmqa_jax.data.tts`);
- `manifest.csv`: one row per capture (the manifest format of README.md, 'Your
  own data') with `image, mos, mos_std, scene, split, device, text, audio` and
  the applied degradation factors;
- `pretrain.csv`: one row per clean scene, `image, text, scene, split`;
- `dataset_info.json`: arguments, counts, VERSION, source digest (written last).

Scenes are crops at several scales and positions of the colour photographs that
ship inside the scikit-image wheel. MOS follows the paper's protocol (Sec. 3.1.1):
26 observers rate on 11 levels 0.0–1.0; MOS is their mean. Their ratings scatter
around a latent quality computed from the degradations that were applied. The
split is scene-wise 8:1:1 (Sec. 5.1.1): no scene is in two splits.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from typing import Callable

import numpy as np
from PIL import Image

from bmqa_jax.data import describe as describe_lib
from bmqa_jax.data import lowlight

VERSION = 2
GENERATOR_MODULES = ("builtin.py", "describe.py", "lowlight.py", "tts.py", "categories.py")
_OURS = ("images", "clean", "audio", "manifest.csv", "pretrain.csv", "dataset_info.json")
_O = describe_lib.SceneObject


@dataclasses.dataclass(frozen=True)
class SourcePhoto:
  name: str
  loader: str  # attribute of skimage.data
  objects: tuple[describe_lib.SceneObject, ...]
  context: str | None
  appeal: float  # small content-dependent quality offset


SOURCES: tuple[SourcePhoto, ...] = (
  SourcePhoto(
    "astronaut",
    "astronaut",
    (
      _O("astronaut", (0.0, 0.03, 1.0, 0.8)),
      _O("smiling woman", (0.0, 0.28, 0.32, 0.6)),
      _O("orange space suit", (0.3, 0.03, 1.0, 0.75)),
      _O("flag", (0.0, 0.0, 0.9, 0.12)),
      _O("space shuttle model", (0.0, 0.68, 0.55, 0.9)),
      _O("helmet", (0.65, 0.53, 1.0, 0.97)),
      _O("badge", (0.6, 0.25, 0.8, 0.4)),
    ),
    "in a studio",
    0.02,
  ),
  SourcePhoto(
    "chelsea",
    "chelsea",
    (
      _O("cat", (0.0, 0.0, 1.0, 1.0)),
      _O("eyes", (0.25, 0.35, 0.55, 0.78), plural=True),
      _O("pink nose", (0.65, 0.5, 0.9, 0.7)),
      _O("whiskers", (0.55, 0.3, 1.0, 1.0), plural=True),
      _O("ear", (0.0, 0.05, 0.2, 0.3)),
    ),
    "at home",
    0.03,
  ),
  SourcePhoto(
    "coffee",
    "coffee",
    (
      _O("coffee cup", (0.05, 0.28, 0.65, 0.72)),
      _O("espresso", (0.25, 0.32, 0.5, 0.65)),
      _O("saucer", (0.2, 0.1, 1.0, 0.82)),
      _O("spoon", (0.55, 0.5, 0.85, 0.7)),
      _O("wooden table", (0.0, 0.0, 1.0, 1.0)),
    ),
    "in a cafe",
    0.0,
  ),
  SourcePhoto(
    "rocket",
    "rocket",
    (
      _O("rocket", (0.25, 0.46, 1.0, 0.56)),
      _O("launch towers", (0.0, 0.0, 1.0, 0.15), plural=True),
      _O("sky", (0.0, 0.15, 0.7, 0.85)),
      _O("lights", (0.82, 0.1, 0.95, 0.9), plural=True),
      _O("lightning masts", (0.3, 0.28, 0.9, 0.74), plural=True),
    ),
    "at the launch pad",
    -0.02,
  ),
  SourcePhoto(
    "motorcycle",
    "stereo_motorcycle",
    (
      _O("motorcycle", (0.25, 0.15, 0.9, 0.92)),
      _O("shelves", (0.0, 0.45, 0.55, 1.0), plural=True),
      _O("boxes", (0.0, 0.55, 0.3, 0.95), plural=True),
      _O("chair", (0.1, 0.0, 0.55, 0.2)),
      _O("wheel", (0.55, 0.15, 0.9, 0.35)),
      _O("concrete floor", (0.6, 0.0, 1.0, 1.0)),
    ),
    "in a garage",
    0.0,
  ),
  SourcePhoto(
    "hubble",
    "hubble_deep_field",
    (
      _O("stars", (0.0, 0.0, 1.0, 1.0), plural=True),
      _O("galaxies", (0.0, 0.0, 1.0, 1.0), plural=True),
      _O("night sky", (0.0, 0.0, 1.0, 1.0)),
    ),
    "in deep space",
    -0.04,
  ),
  SourcePhoto(
    "cameraman",
    "camera",
    (
      _O("man", (0.1, 0.0, 1.0, 0.55)),
      _O("camera", (0.25, 0.45, 0.4, 0.65)),
      _O("tripod", (0.35, 0.42, 1.0, 0.68)),
      _O("grass", (0.55, 0.0, 1.0, 1.0)),
      _O("buildings", (0.2, 0.55, 0.45, 1.0), plural=True),
      _O("sky", (0.0, 0.0, 0.3, 1.0)),
    ),
    "in a park",
    -0.01,
  ),
  SourcePhoto(
    "coins",
    "coins",
    (_O("coins", (0.0, 0.0, 1.0, 1.0), plural=True), _O("dark cloth", (0.0, 0.0, 1.0, 1.0))),
    "in a museum case",
    -0.03,
  ),
)


@dataclasses.dataclass(frozen=True)
class BuildArgs:
  num_scenes: int = 200
  image_size: int = 160
  seed: int = 0
  observers: int = 26
  observer_noise: float = 0.09
  observer_bias: float = 0.04
  light_range: tuple[float, float] = (0.002, 0.6)  # log-uniform scene light
  scales: tuple[float, ...] = (0.45, 0.6, 0.8, 1.0)  # crop side / short side
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  audio: bool = True  # speak the descriptions when a synthesiser exists
  workers: int = 0  # 0: os.cpu_count()


def _load_source(src: SourcePhoto) -> np.ndarray:
  import skimage.data  # pylint: disable=g-import-not-at-top

  img = getattr(skimage.data, src.loader)()
  if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
    img = img[0]
  if img.ndim == 2:
    img = np.stack([img] * 3, -1)
  return img[..., :3].astype(np.float32) / 255.0


def latent_quality(f: dict[str, float], appeal: float) -> float:
  """The quality the observers perceive, from the applied degradations.

  Brightness dominates low-light quality (paper Sec. 3.2.1, Fig. 6c); noise, blur,
  lost saturation, colour cast and compression lower it further (Sec. 3.2.4).
  """
  lum = 1.0 / (1.0 + np.exp(-(f["brightness"] - 0.17) / 0.05))
  noise = np.exp(-f["noise_std"] / 0.12)
  blur = np.exp(-f["blur_px"] / 25.0)
  sat = 0.8 + 0.2 * min(1.0, f["saturation"] / max(f["clean_saturation"], 1e-3))
  cast = 1.0 - 0.25 * min(1.0, f["wb_error"] / 0.3)
  jpeg = 0.9 + 0.1 * f["jpeg_quality"] / 100.0
  q = 0.05 + 0.95 * lum * noise * blur * sat * cast * jpeg + appeal
  return float(np.clip(q, 0.0, 1.0))


def rate(
  quality: float, observers: np.ndarray, noise: float, rng: np.random.Generator
) -> tuple[float, float]:
  """26 observers (biases `observers`) rate on 11 levels; returns (MOS, std)."""
  raw = quality + observers + rng.normal(0.0, noise, observers.shape)
  votes = np.clip(np.round(raw * 10.0) / 10.0, 0.0, 1.0)
  return float(votes.mean()), float(votes.std())


def _crop(img: np.ndarray, src: SourcePhoto, scale: float, size: int, rng: np.random.Generator):
  h, w = img.shape[:2]
  side = int(min(h, w) * scale)
  y = int(rng.integers(0, h - side + 1))
  x = int(rng.integers(0, w - side + 1))
  crop = img[y : y + side, x : x + side]
  crop = (
    np.asarray(
      Image.fromarray(np.round(crop * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    ).astype(np.float32)
    / 255.0
  )
  visible = []
  for obj in src.objects:
    oy0, ox0, oy1, ox1 = obj.box
    by0, bx0 = max(oy0 * h, y), max(ox0 * w, x)
    by1, bx1 = min(oy1 * h, y + side), min(ox1 * w, x + side)
    if by1 <= by0 or bx1 <= bx0:
      continue
    frac = (by1 - by0) * (bx1 - bx0) / max((oy1 - oy0) * h * (ox1 - ox0) * w, 1e-6)
    if frac < 0.3:
      continue
    rel = ((by0 - y) / side, (bx0 - x) / side, (by1 - y) / side, (bx1 - x) / side)
    area = (rel[2] - rel[0]) * (rel[3] - rel[1])
    visible.append((dataclasses.replace(obj, box=rel), area * frac))
  # Speakers name the salient (large, central) things first, keep list order
  # for ties so that e.g. the main subject comes before the background.
  order = sorted(range(len(visible)), key=lambda i: (-round(visible[i][1], 1), i))
  return crop, [visible[i] for i in order]


def _scene_split(num_scenes: int, fractions, seed: int) -> list[str]:
  perm = np.random.default_rng([seed, 7]).permutation(num_scenes)
  n_train = int(round(fractions[0] * num_scenes))
  n_val = int(round(fractions[1] * num_scenes))
  split = ["train"] * num_scenes
  for rank, s in enumerate(perm):
    split[s] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
  return split


def _build_scene(
  args: BuildArgs, out_dir: str, index: int, split: str, synthesize: Callable | None
) -> tuple[list[dict], dict]:
  rng = np.random.default_rng([args.seed, index])
  src = SOURCES[index % len(SOURCES)]
  photo = _load_source(src)
  scale = float(rng.choice(args.scales))
  clean, objects = _crop(photo, src, scale, args.image_size, rng)
  scene = f"s{index:04d}"
  Image.fromarray(np.round(clean * 255).astype(np.uint8)).save(
    os.path.join(out_dir, "clean", f"{scene}.jpg"), quality=95
  )
  clean_factors = dict(
    brightness=0.45,
    noise_std=0.0,
    blur_px=0.0,
    saturation=lowlight._saturation(clean),
    wb_error=0.0,
  )
  clean_text, _ = describe_lib.describe(clean, objects, clean_factors, src.context, rng)
  pre_row = dict(image=f"clean/{scene}.jpg", text=clean_text, scene=scene, split=split)
  observers = rng.normal(0.0, args.observer_bias, args.observers)
  rows = []
  lo, hi = np.log(args.light_range[0]), np.log(args.light_range[1])
  for dev in lowlight.DEVICES:
    light = float(np.exp(rng.uniform(lo, hi)))
    cap = lowlight.capture(clean, dev, light, rng)
    name = f"{scene}_{dev.name}"
    with open(os.path.join(out_dir, "images", f"{name}.jpg"), "wb") as f:
      f.write(cap.jpeg)
    q = latent_quality(cap.factors, src.appeal)
    mos, std = rate(q, observers, args.observer_noise, rng)
    text, lum = describe_lib.describe(cap.image / 255.0, objects, cap.factors, src.context, rng)
    audio = ""
    if synthesize is not None:
      audio = f"audio/{name}.wav"
      synthesize(text, os.path.join(out_dir, audio), rng)
    rows.append(
      dict(
        image=f"images/{name}.jpg",
        mos=round(mos, 4),
        mos_std=round(std, 4),
        scene=scene,
        split=split,
        device=dev.name,
        text=text,
        audio=audio,
        source=src.name,
        luminance_word=lum,
        latent_quality=round(q, 4),
        **{k: round(v, 5) for k, v in cap.factors.items()},
      )
    )
  return rows, pre_row


def _speaker(text, path, rng):
  """Speaks one description with a voice drawn from the scene's generator."""
  from bmqa_jax.data import tts  # pylint: disable=g-import-not-at-top

  tts.synthesize(
    text,
    path,
    voice=str(rng.choice(tts.voices())),
    rate_wpm=int(rng.integers(140, 190)),
    pitch=int(rng.integers(30, 70)),
  )


def _synthesizer():
  try:
    from bmqa_jax.data import tts  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return _speaker if tts.available() else None


def _work(job):
  args, out_dir, index, split, with_audio = job
  return _build_scene(args, out_dir, index, split, _speaker if with_audio else None)


class DatasetMismatchError(ValueError):
  """A folder holds something other than the requested built-in dataset."""


def generator_digest() -> str:
  """sha256 over the source bytes of the modules that generate the dataset."""
  h = hashlib.sha256()
  for name in GENERATOR_MODULES:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), "rb") as f:
      h.update(name.encode() + hashlib.sha256(f.read()).digest())
  return h.hexdigest()


def _identity(args: BuildArgs) -> dict:
  """What must match for a folder to be reused (`workers` only sets the speed)."""
  a = {k: v for k, v in dataclasses.asdict(args).items() if k != "workers"}
  return json.loads(
    json.dumps(
      dict(
        version=VERSION,
        digest=generator_digest(),
        args=a,
        audio=bool(args.audio and _synthesizer()),
      )
    )
  )


def cache_key(args: dict | BuildArgs) -> str:
  """Folder key of a build: VERSION, `generator_digest()` and the arguments."""
  args = args if isinstance(args, BuildArgs) else BuildArgs(**dict(args))
  return hashlib.sha256(json.dumps(_identity(args), sort_keys=True).encode()).hexdigest()[:16]


def _differences(have: dict | None, want: dict) -> list[str]:
  flat = lambda d: {
    **{k: v for k, v in (d.get("args") or {}).items() if k != "workers"},
    **{k: d.get(k) for k in ("audio", "version", "digest")},
  }
  show = lambda k, v: f"{str(v)[:12]} (generator code)" if k == "digest" else repr(v)
  h, w = flat(have if isinstance(have, dict) else {}), flat(want)
  return [
    f"{k}={show(k, h.get(k))} there, {show(k, w.get(k))} requested"
    for k in list(w) + sorted(set(h) - set(w))
    if h.get(k) != w.get(k)
  ]


def _read_info(folder: str) -> dict | None:
  try:
    with open(os.path.join(folder, "dataset_info.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _reusable(out: str, want: dict, overwrite: bool, log) -> bool:
  """True: `out` holds this build; False: build it; else DatasetMismatchError."""
  if os.path.lexists(out) and not os.path.isdir(out):
    raise DatasetMismatchError(f"{out} exists and is not a folder")
  entries = os.listdir(out) if os.path.isdir(out) else []
  have = _read_info(out) if entries else None
  if not entries or (have and not _differences(have, want)):
    return bool(entries)
  what = (
    f"holds a built-in dataset built differently: {'; '.join(_differences(have, want))}"
    if have
    else "is not empty and holds no complete built-in dataset (no dataset_info.json)"
  )
  foreign = sorted(e for e in entries if e not in _OURS and not e.endswith(".tmp"))
  if foreign or not overwrite:
    raise DatasetMismatchError(
      f"{out} {what}"
      + (
        f"; it also holds {foreign[:5]}, not part of a built-in dataset: choose an empty "
        "or new folder"
        if foreign
        else ". Choose another folder, delete this one, or "
        "replace it (launch/build_dataset.py --overwrite; build(..., overwrite=True))"
      )
    )
  log(f"replacing {out}: it {what}")
  return False


def _clean_stale(parent: str, base: str) -> None:
  """Removes temporary folders left by killed builds of `base` (dead pid)."""
  for name in os.listdir(parent):
    pid = name[len(base) + 5 :].split("-")[0]
    if name[: len(base) + 5] in (base + ".tmp-", base + ".old-") and pid.isdigit():
      try:
        os.kill(int(pid), 0)
      except ProcessLookupError:
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
      except OSError:  # alive, another user's
        pass


def build(out_dir: str, args: BuildArgs = BuildArgs(), log=print, overwrite: bool = False) -> str:
  """Writes the dataset to `out_dir` (reused when it holds an identical build:
  arguments, VERSION, generator code); returns the path of its `manifest.csv`.

  Anything else there raises DatasetMismatchError naming the differences
  (`overwrite`: replace another or an interrupted built-in dataset). The build
  goes to a temporary sibling folder renamed into place when complete: a killed
  build leaves `out_dir` as it was; concurrent builds do not mix."""
  want, out = _identity(args), os.path.realpath(out_dir)
  if _reusable(out, want, overwrite, log):
    return os.path.join(out_dir, "manifest.csv")
  parent, base = os.path.split(out)
  os.makedirs(parent, exist_ok=True)
  _clean_stale(parent, base)
  tmp = tempfile.mkdtemp(prefix=f"{base}.tmp-{os.getpid()}-", dir=parent)
  try:
    _generate(tmp, args, want, log)
    try:
      os.rename(tmp, out)  # atomic; replaces an empty folder
    except OSError as e:
      if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) and os.listdir(out) == []:
        for n in sorted(os.listdir(tmp), key=lambda n: n == "dataset_info.json"):
          os.rename(os.path.join(tmp, n), os.path.join(out, n))  # a mount point
      elif _differences(_read_info(out), want):  # else the same build won the race
        if not overwrite:
          raise DatasetMismatchError(
            f"{out} was filled with a different build by another process while this one ran"
          ) from None
        old = tempfile.mkdtemp(prefix=f"{base}.old-{os.getpid()}-", dir=parent)
        os.rename(out, os.path.join(old, "replaced"))
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return os.path.join(out_dir, "manifest.csv")


def _generate(out_dir: str, args: BuildArgs, want: dict, log) -> None:
  for sub in ("images", "clean", "audio"):
    os.makedirs(os.path.join(out_dir, sub))
  splits = _scene_split(args.num_scenes, args.split_fractions, args.seed)
  jobs = [(args, out_dir, i, splits[i], want["audio"]) for i in range(args.num_scenes)]
  workers = args.workers or os.cpu_count() or 1
  # Spawned, not forked: the caller may already run JAX (forked children may
  # deadlock; JAX warns). Scenes depend on (args, index) only: as `workers=1`.
  pool = (
    concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    if workers > 1
    else None
  )
  rows, pre_rows = [], []
  try:
    results = pool.map(_work, jobs, chunksize=4) if pool else map(_work, jobs)
    for i, (scene_rows, pre_row) in enumerate(results):
      rows.extend(scene_rows)
      pre_rows.append(pre_row)
      if (i + 1) % 50 == 0:
        log(f"built {i + 1}/{args.num_scenes} scenes")
  finally:
    if pool:
      pool.shutdown(cancel_futures=True)
  _write_csv(os.path.join(out_dir, "manifest.csv"), rows)
  _write_csv(os.path.join(out_dir, "pretrain.csv"), pre_rows)
  counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
  with open(os.path.join(out_dir, "dataset_info.json"), "w") as f:  # written last
    json.dump(dict(want, counts=counts, devices=[d.name for d in lowlight.DEVICES]), f, indent=1)


def _write_csv(path: str, rows: list[dict]) -> None:
  with open(path, "w", newline="") as f:  # in the build's own temporary folder
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
