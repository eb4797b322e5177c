"""Downloading a model from the Hugging Face hub into its cache, with progress, or the reason why
not (offline, unreachable, refused).

huggingface_hub does the transfer (and honours HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN);
this module asks the hub for the file list and sizes first, so progress has a total, and watches
the bytes arrive in the cache's blob folder, which works the same for every huggingface_hub
version and transfer method.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localrank.engine.progress import LoadProgress
from localrank.errors import ModelError

log = logging.getLogger(__name__)

# What an embedding model folder needs: configs, tokenizer, safetensors weights. Never pickles
# (*.bin), ONNX / OpenVINO exports or GGUF files that some repositories carry too.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
POLL_S = 0.25
LOG_EVERY_S = 5.0


class DownloadError(ModelError):
    """The model could not be downloaded; the message says why (the default model falls back).
    `hub_down`: the hub itself is out of reach (offline mode, unreachable), so asking it for
    another repository is pointless."""

    def __init__(self, message: str, *, hub_down: bool = False) -> None:
        super().__init__(message)
        self.hub_down = hub_down


Downloader = Callable[[str], Path]


def hub_error(exc: BaseException, repo_id: str, endpoint: str) -> DownloadError:
    """Why a hub call failed, in words: offline mode, refused (with the status), unreachable."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, OfflineModeIsEnabled):
        return DownloadError("downloads are disabled (HF_HUB_OFFLINE is set)", hub_down=True)
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return DownloadError(
            f"the Hugging Face hub at {endpoint} refused {repo_id} (HTTP {status}: {first})"
        )
    return DownloadError(
        f"the Hugging Face hub at {endpoint} cannot be reached ({type(exc).__name__}"
        + (f": {first}" if first else "")
        + ")",
        hub_down=True,
    )


def download_snapshot(
    repo_id: str,
    *,
    progress: LoadProgress | None = None,
    endpoint: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Download `repo_id`'s model files into the Hugging Face cache and return the snapshot
    folder, reporting bytes to `progress` and the log. DownloadError says why it could not.

    `endpoint` / `cache_dir`: None means huggingface_hub's own defaults (HF_ENDPOINT,
    HF_HUB_CACHE); tests pass a local stand-in for the hub.
    """
    # Imported here: huggingface_hub (and its HTTP stack) is heavy, and only a download needs it.
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    hub = endpoint or constants.ENDPOINT
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo_id, files_metadata=True)
    except Exception as exc:  # offline, DNS, refused connection, 401/403/404/5xx
        raise hub_error(exc, repo_id, hub) from exc
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    wanted = list(filter_repo_objects(sizes, allow_patterns=MODEL_FILES))
    if not any(f.endswith(".safetensors") for f in wanted):
        raise DownloadError(
            f"{repo_id} on {hub} has no safetensors weights (files: {', '.join(sorted(sizes))})"
        )
    total = sum(sizes[f] for f in wanted)
    log.info(
        "downloading %s from %s: %d files, %.1f MB, into %s",
        repo_id,
        hub,
        len(wanted),
        total / 1e6,
        cache,
    )
    if progress is not None:
        progress.download(repo_id, total)
    blobs = cache / ("models--" + repo_id.replace("/", "--")) / "blobs"
    watcher = _Watcher(blobs, total, repo_id, progress)
    watcher.start()
    started = time.monotonic()
    try:
        # No pinned revision: resolving "main" itself is what records refs/main in the cache,
        # which the next start's offline lookup (local_files_only) needs.
        path = snapshot_download(
            repo_id,
            allow_patterns=MODEL_FILES,
            cache_dir=cache_dir,
            endpoint=endpoint,
            tqdm_class=_silent_tqdm(),  # progress goes to our log and /health instead
        )
    except Exception as exc:
        error = hub_error(exc, repo_id, hub)
        raise DownloadError(f"downloading {repo_id} failed: {error.message}") from exc
    finally:
        watcher.stop()
    if progress is not None:
        progress.bytes_done(total)
    log.info("downloaded %s in %.1fs: %s", repo_id, time.monotonic() - started, path)
    return Path(path)


def _silent_tqdm() -> type:
    """A tqdm that draws nothing (huggingface_hub's bars would fill the daemon's log)."""
    from tqdm.auto import tqdm

    class Silent(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


class _Watcher:
    """Polls the size of the cache's blob folder (partial files included) while a download runs,
    and reports what it grew by: to `progress` every poll, to the log every LOG_EVERY_S."""

    def __init__(
        self, blobs: Path, total: int, repo_id: str, progress: LoadProgress | None
    ) -> None:
        self.blobs, self.total, self.repo_id, self.progress = blobs, total, repo_id, progress
        self._stop = threading.Event()
        self._initial = 0
        self._thread = threading.Thread(target=self._run, name="localrank-download", daemon=True)

    def start(self) -> None:
        self._initial = self.size()  # blobs of other revisions already there
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def size(self) -> int:
        try:
            return sum(f.stat().st_size for f in self.blobs.iterdir() if f.is_file())
        except OSError:
            return 0

    def _run(self) -> None:
        last_log = time.monotonic()
        while not self._stop.wait(POLL_S):
            grown = max(0, self.size() - self._initial)
            done = min(grown, self.total) if self.total else grown
            if self.progress is not None:
                self.progress.bytes_done(done)
            if time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
                log.info(
                    "downloading %s: %.1f of %.1f MB%s",
                    self.repo_id,
                    done / 1e6,
                    self.total / 1e6,
                    pct,
                )
