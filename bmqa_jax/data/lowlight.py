"""A camera-pipeline simulation of low-light capture, in linear light.

Used by the built-in dataset (`bmqa_jax.data.builtin`) to turn a clean photo into
what a given device records in a dim scene. The steps follow the physical order
of a real capture:

1. sRGB → linear light (inverse sRGB transfer curve).
2. Scene illuminance: the linear image is scaled by the scene's light level.
3. Auto exposure: the device lengthens its exposure time up to its longest
   hand-held shutter, then raises the analogue gain up to its maximum ISO; what is
   still missing stays dark.
4. Sensor: Poisson shot noise on the collected photo-electrons (full-well
   capacity sets the scale), then Gaussian read noise, both amplified by the gain.
5. Camera shake: at long exposures, a linear motion-blur kernel whose length grows
   with the exposure time times the device's shake rate.
6. White-balance error: a per-channel gain, the device's bias plus a random part.
7. Tone curve: the device's gamma and contrast S-curve, back to display values.
8. JPEG at the device's quality.

Every quantity that defines the degradation is returned in `Capture.factors`, so
the dataset can derive a latent quality and a description from what was applied.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class Device:
  """One simulated camera; every field is a physical setting of its pipeline."""

  name: str
  full_well: float  # photo-electrons at saturation at base gain
  read_noise: float  # electrons (std) at base gain
  max_exposure: float  # longest hand-held exposure, in units of the base exposure
  max_gain: float  # largest analogue gain (ISO / base ISO)
  shake: float  # motion-blur pixels per unit of exposure beyond 1 (per 256 px)
  wb_bias: tuple[float, float, float]  # systematic channel gains (R, G, B)
  wb_jitter: float  # std of the random white-balance error per channel
  gamma: float  # display gamma of the tone curve
  contrast: float  # strength of the S-curve, 0 = none
  jpeg_quality: int


# Five devices, one fixed profile each, from a noisy low-end phone to a
# large-sensor camera (numbers chosen to span the range of real sensors).
DEVICES: tuple[Device, ...] = (
  Device(
    "phone_a",
    full_well=1500.0,
    read_noise=6.0,
    max_exposure=4.0,
    max_gain=16.0,
    shake=1.6,
    wb_bias=(1.10, 1.0, 0.85),
    wb_jitter=0.06,
    gamma=2.2,
    contrast=0.25,
    jpeg_quality=70,
  ),
  Device(
    "phone_b",
    full_well=3000.0,
    read_noise=3.5,
    max_exposure=6.0,
    max_gain=12.0,
    shake=1.2,
    wb_bias=(0.92, 1.0, 1.12),
    wb_jitter=0.05,
    gamma=2.3,
    contrast=0.35,
    jpeg_quality=80,
  ),
  Device(
    "compact",
    full_well=6000.0,
    read_noise=3.0,
    max_exposure=8.0,
    max_gain=8.0,
    shake=1.0,
    wb_bias=(1.05, 1.0, 0.95),
    wb_jitter=0.04,
    gamma=2.2,
    contrast=0.15,
    jpeg_quality=85,
  ),
  Device(
    "dslr",
    full_well=25000.0,
    read_noise=2.0,
    max_exposure=10.0,
    max_gain=25.0,
    shake=0.5,
    wb_bias=(1.0, 1.0, 1.0),
    wb_jitter=0.025,
    gamma=2.2,
    contrast=0.2,
    jpeg_quality=95,
  ),
  Device(
    "dashcam",
    full_well=1000.0,
    read_noise=8.0,
    max_exposure=2.0,
    max_gain=8.0,
    shake=2.5,
    wb_bias=(1.15, 1.0, 0.80),
    wb_jitter=0.08,
    gamma=2.0,
    contrast=0.4,
    jpeg_quality=55,
  ),
)


def device(name: str) -> Device:
  for d in DEVICES:
    if d.name == name:
      return d
  raise KeyError(f"unknown device {name!r}; known: {[d.name for d in DEVICES]}")


@dataclasses.dataclass
class Capture:
  image: np.ndarray  # uint8 [H, W, 3], after JPEG
  jpeg: bytes  # the encoded file the device writes
  clean_render: np.ndarray  # float [H, W, 3] in [0, 1], same pipeline without noise
  factors: dict[str, float]


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
  return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _tone(x: np.ndarray, gamma: float, contrast: float) -> np.ndarray:
  y = np.clip(x, 0.0, 1.0) ** (1.0 / gamma)
  s = y * y * (3.0 - 2.0 * y)  # smoothstep S-curve
  return (1.0 - contrast) * y + contrast * s


def _motion_kernel(length: float, angle: float) -> np.ndarray:
  size = int(np.ceil(length)) | 1
  k = np.zeros((size, size), np.float64)
  c = size // 2
  for t in np.linspace(-0.5, 0.5, 4 * size):
    y = c + t * length * np.sin(angle)
    x = c + t * length * np.cos(angle)
    k[int(round(y)) % size, int(round(x)) % size] += 1.0
  return k / k.sum()


def _jpeg(img_u8: np.ndarray, quality: int) -> tuple[np.ndarray, bytes]:
  buf = io.BytesIO()
  Image.fromarray(img_u8).save(buf, format="JPEG", quality=int(quality))
  data = buf.getvalue()
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), data


def capture(clean: np.ndarray, dev: Device, light: float, rng: np.random.Generator) -> Capture:
  """Simulates `dev` photographing the clean sRGB image `clean` at light level `light`.

  Args:
    clean: float [H, W, 3] sRGB in [0, 1], the well-lit scene.
    dev: the device profile.
    light: scene illuminance relative to a well-lit scene (1.0); low light is
      roughly 0.002–0.2.
    rng: the source of all randomness (noise, shake direction, WB error).
  """
  lin = srgb_to_linear(clean.astype(np.float64))
  needed = 1.0 / light  # amplification needed to reach a normal exposure
  exposure = float(min(needed, dev.max_exposure))
  gain = float(min(needed / exposure, dev.max_gain))
  shortfall = needed / (exposure * gain)  # ≥ 1; how much darker than normal
  electrons = lin * light * exposure * dev.full_well
  noisy = rng.poisson(electrons).astype(np.float64)
  noisy += rng.normal(0.0, dev.read_noise, size=noisy.shape)
  signal = noisy * gain / dev.full_well
  clean_signal = electrons * gain / dev.full_well

  h, w = clean.shape[:2]
  blur_len = max(0.0, exposure - 1.0) * dev.shake * max(h, w) / 256.0
  blur_len *= float(rng.uniform(0.5, 1.5))
  if blur_len >= 1.0:
    k = _motion_kernel(blur_len, float(rng.uniform(0, np.pi)))
    signal = np.stack([ndimage.convolve(signal[..., c], k, mode="reflect") for c in range(3)], -1)
    clean_signal = np.stack(
      [ndimage.convolve(clean_signal[..., c], k, mode="reflect") for c in range(3)], -1
    )

  wb = np.asarray(dev.wb_bias) * np.exp(rng.normal(0.0, dev.wb_jitter, 3))
  wb = wb / wb[1]
  out = _tone(signal * wb, dev.gamma, dev.contrast)
  ref = _tone(clean_signal * wb, dev.gamma, dev.contrast)
  img, jpeg = _jpeg(np.round(out * 255.0).astype(np.uint8), dev.jpeg_quality)

  noise_std = float(np.std(np.clip(out, 0, 1) - ref))  # sensor noise, before JPEG
  luma_w = np.array([0.299, 0.587, 0.114])
  brightness = float(np.mean(img / 255.0 @ luma_w))
  hsv_sat = _saturation(img / 255.0)
  clean_sat = _saturation(clean)
  factors = dict(
    light=float(light),
    exposure=exposure,
    gain=gain,
    shortfall=float(shortfall),
    blur_px=float(blur_len / max(h, w) * 256.0),  # at a 256-px reference size
    noise_std=noise_std,
    brightness=brightness,
    wb_error=float(np.max(np.abs(np.log(wb)))),  # colour cast vs. neutral
    saturation=float(hsv_sat),
    clean_saturation=float(clean_sat),
    jpeg_quality=float(dev.jpeg_quality),
  )
  return Capture(image=img, jpeg=jpeg, clean_render=ref, factors=factors)


def _saturation(rgb: np.ndarray) -> float:
  mx = rgb.max(-1)
  mn = rgb.min(-1)
  sat = np.where(mx > 1e-3, (mx - mn) / np.maximum(mx, 1e-3), 0.0)
  # Saturation of very dark pixels is invisible: weight by value.
  return float(np.sum(sat * mx) / max(np.sum(mx), 1e-6))
