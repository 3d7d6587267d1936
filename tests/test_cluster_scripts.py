"""The cluster launchers as they are: launch/slurm/train.sbatch run by bash with
a stand-in `srun` that starts one local process per "node" with the variables
SLURM sets for 2 nodes × 1 task (JAX reads the cluster from them), and
launch/tpu/train.sh's commands recorded by a stand-in `gcloud`."""

import os
import socket
import stat
import subprocess
import sys

from bmqa_jax.train_lib import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SRUN = r"""#!/bin/bash
# Stand-in srun: one task per node on this machine, with SLURM's step variables.
cmd=()
for a in "$@"; do
  case "$a" in --ntasks-per-node=*|--kill-on-bad-exit=*) ;; *) cmd+=("$a") ;; esac
done
pids=()
for i in $(seq 0 $((NODES - 1))); do
  SLURM_PROCID=$i SLURM_NODEID=$i SLURM_LOCALID=0 SLURM_NTASKS=$NODES \
  SLURM_STEP_NUM_NODES=$NODES SLURM_STEP_NODELIST=localhost \
  SLURM_STEP_TASKS_PER_NODE="1(x$NODES)" "${cmd[@]}" > "$LOGS/task$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""


def _executable(path, text):
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def _job_id():
  """A job id whose JAX coordinator port (61440 + id mod 4096) is free."""
  for job in range(1000, 5000, 37):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", 61440 + job % 4096))
        return job
      except OSError:
        continue
  raise RuntimeError("no free port")


def test_slurm_script_runs_two_nodes(tmp_path):
  bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
  bin_dir.mkdir()
  logs.mkdir()
  _executable(bin_dir / "srun", SRUN)
  workdir = str(tmp_path / "run")
  env = dict(
    os.environ,
    PATH=f"{bin_dir}:{os.environ['PATH']}",
    NODES="2",
    LOGS=str(logs),
    SLURM_JOB_ID=str(_job_id()),
    SLURM_SUBMIT_DIR=ROOT,
    PYTHON=sys.executable,
    CONFIG="configs/quickstart.py:tiny=True,modalities=image",
    WORKDIR=workdir,
    JAX_PLATFORMS="cpu",
    BMQA_DATA_DIR=str(tmp_path / "data"),
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  extra = [
    "--config.stages=st",
    "--config.st.epochs=0.2",
    "--config.st.init=fresh",
    "--config.st.feature_cache=False",
    "--config.st.eval_split=",
  ]
  proc = subprocess.run(
    ["bash", os.path.join(ROOT, "launch/slurm/train.sbatch")] + extra,
    env=env,
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    timeout=900,
  )
  task = [open(logs / f"task{i}.log").read() for i in range(2)]
  assert proc.returncode == 0, proc.stderr[-2000:] + task[0][-3000:] + task[1][-3000:]
  for i in range(2):  # the script's own path: --multihost, JAX's SLURM cluster
    assert f"process {i}/2: 2 local of 4 devices" in task[i], task[i][-2000:]
  assert checkpoint.latest_step(os.path.join(workdir, "checkpoints", "st")) == 2
  assert os.path.exists(os.path.join(workdir, "config.json"))


def test_tpu_script_runs_the_same_command_on_every_worker(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  record = tmp_path / "gcloud.txt"
  _executable(
    bin_dir / "gcloud",
    f'#!/bin/bash\nprintf "%s\\n" "$@" >> "{record}"\necho ---- >> "' + str(record) + '"\n',
  )
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TPU="v4-32", ZONE="us-central2-b")
  proc = subprocess.run(
    [
      "bash",
      os.path.join(ROOT, "launch/tpu/train.sh"),
      "configs/mliq.py:img=vit_b32",
      "/mnt/runs/a",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0, proc.stderr
  args = record.read_text().split("\n")
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "v4-32"]
  assert "--worker=all" in args and "--zone=us-central2-b" in args
  command = [a for a in args if a.startswith("--command=")][0]
  assert command == (
    "--command=cd ~/bmqa_jax && python3 launch/train.py --multihost "
    "--config='configs/mliq.py:img=vit_b32' --workdir='/mnt/runs/a'"
  )
