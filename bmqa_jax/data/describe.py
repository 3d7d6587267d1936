"""Quality semantic descriptions (QSD) written the way the paper's speakers spoke.

The paper's annotators followed two principles (Sec. 3.1.2): *intuitive* perception
(overall brightness, the salient objects, their colours, texture) and *empirical*
perception (what the scene is, from real-world knowledge), and were asked to use
luminance words (dark / dim / light / bright) and quality words (blurred, noisy,
dull, vivid, colourful). Its analysis (Sec. 3.2) found that darker images get
shorter descriptions with fewer objects and fewer colours. `describe` reproduces
those regularities from what the simulated capture actually shows, with the
omissions and variety of a real speaker; sentences are 6–45 words long.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LUMINANCE_WORDS = ("dark", "dim", "light", "bright")

# Hue ranges in degrees of the HSV hue circle and the word a speaker uses.
_HUE_NAMES = (
  (15, "red"),
  (40, "orange"),
  (70, "yellow"),
  (160, "green"),
  (200, "cyan"),
  (260, "blue"),
  (300, "purple"),
  (340, "pink"),
  (361, "red"),
)


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """A nameable thing in a source photo, with its box in relative coordinates."""

  name: str
  box: tuple[float, float, float, float]  # y0, x0, y1, x1 in [0, 1]
  plural: bool = False


def colour_name(rgb: np.ndarray) -> str | None:
  """The colour word for the dominant visible colour of a region, or None.

  Pixels too dark to show a colour are ignored; a region whose visible pixels are
  unsaturated is named white/grey/black; a region that is mostly invisible gets
  no colour at all (a speaker cannot name what they cannot see).
  """
  px = rgb.reshape(-1, 3).astype(np.float64)
  mx = px.max(1)
  mn = px.min(1)
  visible = mx > 0.12
  if visible.mean() < 0.15:
    return None
  px, mx, mn = px[visible], mx[visible], mn[visible]
  sat = (mx - mn) / np.maximum(mx, 1e-6)
  coloured = sat > 0.35
  if coloured.mean() < 0.25:
    v = float(np.median(mx))
    return "white" if v > 0.75 else ("grey" if v > 0.3 else "black")
  hue = _hue(px[coloured])
  counts: dict[str, int] = {}
  for h in hue:
    for limit, name in _HUE_NAMES:
      if h < limit:
        counts[name] = counts.get(name, 0) + 1
        break
  return max(counts, key=counts.get)


def _hue(px: np.ndarray) -> np.ndarray:
  r, g, b = px[:, 0], px[:, 1], px[:, 2]
  mx = px.max(1)
  d = np.maximum(mx - px.min(1), 1e-6)
  h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
  return h * 60.0


def visible_colours(rgb: np.ndarray, min_fraction: float = 0.04) -> list[str]:
  """The chromatic colours covering at least `min_fraction` of the visible image."""
  px = rgb.reshape(-1, 3).astype(np.float64)
  mx = px.max(1)
  sat = (mx - px.min(1)) / np.maximum(mx, 1e-6)
  mask = (mx > 0.15) & (sat > 0.4)
  if not mask.any():
    return []
  hue = _hue(px[mask])
  out = []
  for lo, (limit, name) in zip([0] + [l for l, _ in _HUE_NAMES[:-1]], _HUE_NAMES):
    frac = float(np.sum((hue >= lo) & (hue < limit))) / len(px)
    if frac >= min_fraction and name not in out:
      out.append(name)
  return out


def luminance_word(brightness: float, rng: np.random.Generator) -> str:
  """Dark / dim / light / bright from perceived brightness, with speaker jitter."""
  b = brightness + rng.normal(0.0, 0.015)
  if b < 0.13:
    return "dark"
  if b < 0.22:
    return "dim"
  if b < 0.32:
    return "light"
  return "bright"


_LUM_OPENERS = {
  "dark": [
    "a dark photo of",
    "very dark, I can barely see",
    "a dark picture showing",
    "it is dark,",
    "a dark shot of",
  ],
  "dim": [
    "a dim photo of",
    "a dim picture of",
    "dim light,",
    "a rather dim view of",
    "in dim light,",
  ],
  "light": [
    "a fairly light photo of",
    "light enough to see",
    "a light picture of",
    "a light, reasonably clear view of",
  ],
  "bright": [
    "a bright photo of",
    "a bright and clear view of",
    "bright light,",
    "a well lit, bright picture of",
  ],
}
_NOISE = {
  1: ["slightly noisy", "a little grainy"],
  2: ["noisy", "grainy and noisy"],
  3: ["very noisy", "full of noise"],
}
_BLUR = {
  1: ["slightly blurred", "a bit soft"],
  2: ["blurred", "blurry"],
  3: ["badly blurred", "very blurry, probably camera shake"],
}


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: SceneObject, colour: str | None) -> str:
  named_colour = any(c in obj.name.split() for _, c in _HUE_NAMES)
  words = f"{colour} {obj.name}" if colour and not named_colour else obj.name
  return words if obj.plural else f"{_article(words)} {words}"


def _join(items: list[str]) -> str:
  if len(items) <= 1:
    return "".join(items)
  return ", ".join(items[:-1]) + " and " + items[-1]


def describe(
  image: np.ndarray,
  objects: list[tuple[SceneObject, float]],
  factors: dict[str, float],
  context: str | None,
  rng: np.random.Generator,
) -> tuple[str, str]:
  """Writes one QSD for a captured image.

  Args:
    image: float [H, W, 3] in [0, 1], what the speaker sees.
    objects: visible objects with their visible fraction, most prominent first;
      boxes are relative to `image`.
    factors: the capture's degradation factors (`lowlight.capture`).
    context: an empirical scene word ("in a garage") or None.
    rng: the speaker's randomness.

  Returns:
    (text, luminance word).
  """
  lum = luminance_word(factors["brightness"], rng)
  level = LUMINANCE_WORDS.index(lum)
  # Fewer objects are named in darker images (Fig. 7a), at least one.
  n_obj = int(np.clip(rng.integers(1, 3) + level + rng.integers(-1, 2), 1, 5))
  named = objects[:n_obj] if objects else []
  h, w = image.shape[:2]
  parts = []
  for obj, _ in named:
    y0, x0, y1, x1 = obj.box
    region = image[
      int(y0 * h) : max(int(y1 * h), int(y0 * h) + 1),
      int(x0 * w) : max(int(x1 * w), int(x0 * w) + 1),
    ]
    colour = colour_name(region) if rng.random() < 0.4 + 0.15 * level else None
    parts.append(_object_phrase(obj, colour))
  if not parts:
    parts = ["something I cannot make out"]
  text = f"{rng.choice(_LUM_OPENERS[lum])} {_join(parts)}"
  if context and rng.random() < 0.6:
    text += f" {context}"

  colours = visible_colours(image)
  rng.shuffle(colours)
  if colours and rng.random() < 0.75:
    text += f", the colours are {_join(colours[:4])}"
  elif not colours and rng.random() < 0.7:
    text += ", hardly any colour is visible"

  defects = []
  noise = factors["noise_std"]
  noise_level = 3 if noise > 0.09 else 2 if noise > 0.05 else 1 if noise > 0.025 else 0
  if noise_level and rng.random() < 0.9:
    defects.append(str(rng.choice(_NOISE[noise_level])))
  blur = factors["blur_px"]
  blur_level = 3 if blur > 8 else 2 if blur > 4 else 1 if blur > 2 else 0
  if blur_level and rng.random() < 0.85:
    defects.append(str(rng.choice(_BLUR[blur_level])))
  sat = factors["saturation"]
  if sat < 0.18 and rng.random() < 0.8:
    defects.append(str(rng.choice(["dull", "dull and washed out", "flat and dull"])))
  elif sat > 0.35 and level >= 2 and rng.random() < 0.8:
    defects.append(str(rng.choice(["vivid", "colourful and vivid", "vivid colours"])))
  if factors.get("wb_error", 0.0) > 0.2 and rng.random() < 0.6:
    defects.append(str(rng.choice(["with a colour cast", "the white balance is off"])))
  if not defects and level >= 2 and rng.random() < 0.7:
    defects.append(str(rng.choice(["clean and sharp", "sharp with little noise"])))
  if level == 0 and rng.random() < 0.5:
    defects.append("details are lost in the shadows")
  if defects:
    text += ", " + _join(defects)
  words = text.replace(",", " ").split()
  if len(words) < 6:
    text += ", not much else to see"
  if len(text.split()) > 45:
    text = " ".join(text.split()[:45])
  return text.strip().rstrip(",") + ".", lum
