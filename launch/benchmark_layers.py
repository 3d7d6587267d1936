r"""Each distinct convolution of an image encoder alone, Flax against PyTorch.

    python launch/benchmark_layers.py --models=resnet50 [--batch=8] [--json=FILE]

Traces the encoder's forward pass at ``--batch`` × ``--image_size``², collects
its convolutions (input shape, kernel, strides, padding, groups, how many), and
times each one's forward pass, input gradient and kernel gradient with the
library's CPU convolution (``--conv_impl``) and with PyTorch's (channels-last,
``aten.convolution_backward``), ``--steps`` calls each after one untimed call.
Prints a table per encoder with the sums over the network: where a training
step (``launch/benchmark.py``) loses time, layer by layer.
"""

from absl import app
from absl import flags

from bmqa_jax import runtime
from bmqa_jax.models.image import benchmark

_MODELS = flags.DEFINE_list('models', ['resnet50'], 'Encoders.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input side.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed calls per convolution and pass.')
_TORCH = flags.DEFINE_bool('torch', True, 'Also time PyTorch.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads (0: default).')
_CONV = flags.DEFINE_enum('conv_impl', 'auto', ['auto', 'onednn', 'gemm', 'xla'],
                          'Flax CPU convolution (config.model.conv_impl).')
_JSON = flags.DEFINE_string('json', None, 'Write the rows here as JSON.')
runtime.define_flags(cluster=False)


def main(argv):
  del argv
  runtime.start()
  o = benchmark.Options(steps=_STEPS.value, torch_threads=_TORCH_THREADS.value,
                        conv_impl=_CONV.value)
  benchmark.print_layers(_MODELS.value, _BATCH.value, _IMAGE_SIZE.value, o,
                         _TORCH.value, _JSON.value)


if __name__ == '__main__':
  app.run(main)
