"""Two processes that build the same dataset at once (two runs started together) both get the
one build: the second waits for the first's lock instead of building beside it."""

import subprocess
import sys
import time
from pathlib import Path

from mta.data import integrity

BUILD = """
import sys
from mta.data.tfds_mqar import mqar_config, prepare_mqar
config = mqar_config(num_pairs=8, length=256, num_train=20000, num_validation=10, num_test=10)
builder = prepare_mqar(config, sys.argv[1])
print(len(builder.as_data_source()["train"]))
"""


def test_concurrent_builds_share_one(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path)], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # start the second once the first is writing its build (TFDS's incomplete.* directory)
    while not list(tmp_path.glob("mta_mqar/*/incomplete*")) and first.poll() is None:
        assert time.monotonic() < deadline, "the first build never started"
        time.sleep(0.05)
    assert first.poll() is None, "the first build finished before the second started"
    second = subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path)], stdout=subprocess.PIPE)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert [out.split()[-1] for out in outputs] == [b"20000", b"20000"]
    (build,) = [p for p in tmp_path.glob("mta_mqar/*/*") if p.is_dir()]
    integrity.verify_checksums(str(build))
    assert not list(Path(tmp_path).glob("mta_mqar/*/incomplete*"))
