"""Where localrank keeps its files.

`LOCALRANK_HOME` (via Settings.home) puts everything under one folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "localrank"


@dataclass(frozen=True)
class Paths:
    data: Path
    config: Path
    logs: Path
    cache: Path

    @classmethod
    def resolve(cls, home: Path | None = None) -> Paths:
        if home is not None:
            home = Path(home).expanduser()
            return cls(home / "data", home / "config", home / "logs", home / "cache")
        return cls(
            Path(platformdirs.user_data_dir(APP_NAME)),
            Path(platformdirs.user_config_dir(APP_NAME)),
            Path(platformdirs.user_log_dir(APP_NAME)),
            Path(platformdirs.user_cache_dir(APP_NAME)),
        )

    @property
    def config_file(self) -> Path:
        return self.config / "config.toml"

    @property
    def database(self) -> Path:
        return self.data / "localrank.db"

    def ensure(self) -> Paths:
        for p in (self.data, self.config, self.logs, self.cache):
            p.mkdir(parents=True, exist_ok=True)
        return self
