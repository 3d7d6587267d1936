r"""Image-encoder speed, Flax against the PyTorch reference in the same run (issue 3).

  bmqa-benchmark --models=resnet50,vit_b32 --batch=8 [--json=FILE]

Per encoder and mode, Flax and PyTorch each in a process of its own: after
``--warmup`` untimed steps (compilation included), ``--steps`` rounds of ``--settle``
untimed and one timed step of Flax, then of PyTorch, of ``train`` (forward,
softmax cross-entropy on a 1000-class head, backward, SGD-momentum update; one
``jax.jit``, state donated) or ``infer`` (eval-mode forward). Prints images/s
from the median steps, the ratio (> 1: Flax is faster), Flax's first step, and
the CPU seconds (user + system, and system) of each library's process in a
step: a figure that other jobs on the cores move less than the wall time.
PyTorch runs as its users run it, without `bmqa_jax.huge_pages` (unless
``--torch_huge_pages``). docs/performance.md: the tables and their commands.
"""

import json

from absl import flags

from bmqa_jax import runtime
from bmqa_jax.models.image import benchmark

_MODELS = flags.DEFINE_list(
  "models", ["resnet50", "vit_b32", "convnext_base", "efficientnet_b4", "vgg19"], "Encoders."
)
_MODES = flags.DEFINE_list("modes", ["train", "infer"], "train and/or infer.")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input side.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (rounds).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps first (compilation).")
_SETTLE = flags.DEFINE_integer("settle", 2, "Untimed steps before each timed one.")
_LR = flags.DEFINE_float("learning_rate", 0.01, "SGD learning rate.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier size.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: default).")
_TORCH_HUGE = flags.DEFINE_bool("torch_huge_pages", False, "PyTorch with huge pages too.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
runtime.define_flags(cluster=False)


def main(_):
  runtime.start()
  batch, size = _BATCH.value, _IMAGE_SIZE.value
  o = benchmark.Options(
    dtype=_DTYPE.value,
    num_classes=_NUM_CLASSES.value,
    learning_rate=_LR.value,
    momentum=_MOMENTUM.value,
    steps=_STEPS.value,
    warmup=_WARMUP.value,
    settle=_SETTLE.value,
    torch_threads=_TORCH_THREADS.value,
    torch_huge_pages=_TORCH_HUGE.value,
  )
  print(benchmark.header(o, batch, size))
  print(
    "| model | mode | batch | Flax img/s | PyTorch img/s | ratio | Flax first step s "
    "| CPU s/step Flax (sys) | PyTorch (sys) |"
  )
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  rows = []
  fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
  for name in _MODELS.value:
    for mode in _MODES.value:
      r = benchmark.row(name, mode, batch, size, o, _TORCH.value)
      rows.append(r)
      print(
        f"| {name} | {mode} | {batch} | {fmt(r['jax_img_s'])} | "
        f"{fmt(r['torch_img_s'])} | {fmt(r['ratio'])} | {fmt(r['jax_first_step_s'])} | "
        f"{fmt(r['jax_cpu_s'])} ({fmt(r['jax_sys_s'])}) | "
        f"{fmt(r['torch_cpu_s'])} ({fmt(r['torch_sys_s'])}) |",
        flush=True,
      )
      if _JSON.value:  # rewritten after every row: a cut-off run keeps what it measured
        with open(_JSON.value, "w") as f:
          json.dump(rows, f, indent=1)
