"""One build per dataset: processes that build the same TFDS dataset at once (runs started
together) take turns on a lock file beside it, so the second finds the first's build instead of
building its own and failing on TFDS's final rename."""

import contextlib
import fcntl
import os


@contextlib.contextmanager
def build_lock(data_dir: str):
    """Holds an exclusive lock on `<config dir>.lock`, where data_dir is a builder's
    `<data_dir>/<dataset>/<config>/<version>`, for a local path; a remote one (gs://...) is not
    locked (multi-host runs build on process 0 only)."""
    config_dir = os.path.dirname(str(data_dir).rstrip("/"))
    if "://" in config_dir:
        yield
        return
    os.makedirs(os.path.dirname(config_dir), exist_ok=True)
    with open(f"{config_dir}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield
