from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def no_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty cache, no $MWNET_DATA and no network: tests see only the files they write."""
    import mwnet.data.download as download

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MWNET_DATA", raising=False)

    def offline(url: str, timeout: float = 60.0):
        raise OSError(f"offline test: {url}")

    monkeypatch.setattr(download, "open_url", offline)
