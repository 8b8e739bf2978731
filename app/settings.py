"""What ``lookalike app`` passes to the Streamlit process: environment variables read into AppSettings.

Standard library only, so that ``lookalike --help`` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_INDEX = "LOOKALIKE_APP_INDEX"
ENV_DB = "LOOKALIKE_APP_DB"
ENV_NIGHTS = "LOOKALIKE_APP_NIGHTS"
ENV_IMAGENET_R = "LOOKALIKE_APP_IMAGENET_R"
ENV_MAX_UPLOAD_MB = "LOOKALIKE_APP_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 20


@dataclass(frozen=True)
class AppSettings:
    """What ``lookalike app`` was started with (passed to the Streamlit process in environment variables).

    Attributes:
        index_dir: the index folder (may not exist yet), or None when none was given.
        nights_root: a NIGHTS folder (holding data.csv) for the Datasets page, or None.
        imagenet_r_root: an ImageNet-R folder for the Datasets page, or None.
        max_upload_bytes: largest upload accepted.
        db_url: SQLAlchemy URL of the catalog when it is not the SQLite file in ``index_dir`` (``--db``).
    """

    index_dir: Path | None
    nights_root: Path | None = None
    imagenet_r_root: Path | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    db_url: str | None = None


def load_settings(env: Mapping[str, str] | None = None) -> AppSettings:
    """Read AppSettings from ``env`` (default ``os.environ``); bad values fall back to defaults."""
    env = os.environ if env is None else env

    def path(var: str) -> Path | None:
        v = env.get(var, "").strip()
        return Path(v).expanduser().absolute() if v else None

    try:
        mb = max(1, int(env.get(ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB)))
    except ValueError:
        mb = DEFAULT_MAX_UPLOAD_MB
    return AppSettings(index_dir=path(ENV_INDEX), nights_root=path(ENV_NIGHTS), imagenet_r_root=path(ENV_IMAGENET_R),
                       max_upload_bytes=mb * 1024 * 1024, db_url=env.get(ENV_DB, "").strip() or None)
