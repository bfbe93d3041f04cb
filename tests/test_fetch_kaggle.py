"""`steelflow fetch` from Kaggle, end to end: the official client (kaggle, kagglesdk,
requests) against a stand-in Kaggle server on the loopback address (tests/kaggle_server.py).

Only the server is not the real one: authentication, the download and its redirect,
the client's retries, the zip, its extraction and the layout checks all run for real.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import time
import zipfile
from pathlib import Path

import pytest

from steelflow.cli import main
from steelflow.sources import RULES_URL
from tests.conftest import TEST_CONFIG, fetch_synthetic
from tests.kaggle_server import RULES_MESSAGE, STORAGE_HOST, KaggleServer

TOKEN = "KGAT_5f0c8e1d2b3a49687766554433221100"
USER = "steel-tester"
KEY = "8d9e0f1a2b3c4d5e6f708192a3b4c5d6"
PLACES = ["KAGGLE_API_TOKEN", "access_token", "kaggle.json"]  # where a user puts credentials
DOWNLOAD = "/api/v1/competitions.CompetitionApiService/DownloadDataFiles"
ISOLATED = [  # the client's settings that must not come from the machine running the tests
    "KAGGLE_API_TOKEN",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_V1_TOKEN",
    "KAGGLE_KERNEL_RUN_TYPE",
    "VERBOSE",
    "VERBOSE_OUTPUT",
    *(f"{name}_proxy" for name in ("http", "https", "all", "no")),
    *(f"{name}_PROXY" for name in ("HTTP", "HTTPS", "ALL", "NO")),
]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The competition's zip in today's Kaggle layout, of 6 synthetic train and 2 test images."""
    root = tmp_path_factory.mktemp("kaggle")
    data = fetch_synthetic(root / "synthetic", 6, 2)
    assert (data / "train.csv").read_text().startswith("ImageId,ClassId,EncodedPixels\n")
    sample = (data / "sample_submission.csv").read_text().splitlines()
    assert sample[0] == "ImageId,EncodedPixels,ClassId" and len(sample) == 3
    assert all(row.endswith(".jpg,1 409600,0") for row in sample[1:])
    path = root / "severstal-steel-defect-detection.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(data.rglob("*")):
            if file.is_file() and file.name != "test_truth.csv":  # Kaggle keeps the truth
                zf.write(file, file.relative_to(data))
    return path


@pytest.fixture(scope="module")
def local_raw(archive, tmp_path_factory) -> dict[str, str]:
    """The digests of what the local source makes of the same zip."""
    out = tmp_path_factory.mktemp("local") / "raw"
    local = ["--set", "data.source=local", "--set", f"data.local_path={archive}"]
    assert main(["fetch", "--config", str(TEST_CONFIG), *local, "--out", str(out)]) == 0
    return digest(out)


def kaggle_module():
    with contextlib.redirect_stdout(io.StringIO()):  # its import prints a login help page
        return importlib.import_module("kaggle.api.kaggle_api_extended")


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def kaggle(archive, home, monkeypatch):
    """The stand-in server, with the client pointed at it and a home of its own (the real
    ~/.kaggle is never read or written); no credentials are given yet."""
    (home / ".kaggle").mkdir(parents=True)
    for name in ISOLATED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # http://localhost/api/v1/...
    with KaggleServer(archive) as server:
        server.tokens[TOKEN] = USER
        server.keys[USER] = KEY
        monkeypatch.setenv("http_proxy", server.proxy)  # localhost:80 is reached through it
        api = kaggle_module().KaggleApi
        # KaggleApi reads these three when kaggle is first imported, which a `steelflow fetch`
        # process does under the environment above; in this process it may have been earlier
        monkeypatch.setattr(api, "config_dir", str(home / ".kaggle"))
        monkeypatch.setattr(api, "config", str(home / ".kaggle" / "kaggle.json"))
        monkeypatch.setattr(api, "args", ["--local"])
        with api().build_kaggle_client() as client:  # never the real Kaggle
            assert client.http_client().get_non_api_endpoint() == "http://localhost"
        yield server


def give(place: str, home: Path, monkeypatch, secret: str | None = None) -> None:
    """Credentials in ``place``: the token (or the legacy key) ``secret``, the right one by default."""
    if place == "KAGGLE_API_TOKEN":
        monkeypatch.setenv("KAGGLE_API_TOKEN", secret or TOKEN)
    elif place == "access_token":
        (home / ".kaggle" / "access_token").write_text((secret or TOKEN) + "\n")
    else:
        legacy = home / ".kaggle" / "kaggle.json"
        legacy.write_text(json.dumps({"username": USER, "key": secret or KEY}))
        legacy.chmod(0o600)


def fetch(out: Path, capsys) -> tuple[int, list[str]]:
    """`steelflow fetch` from Kaggle into ``out``: the exit code and the lines on stderr."""
    kaggle = ["--set", "data.source=kaggle", "--out", str(out)]
    code = main(["fetch", "--config", str(TEST_CONFIG), *kaggle])
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err.splitlines()


def progress(line: str) -> bool:
    """Whether ``line`` is (a step of) the client's tqdm progress bar."""
    return line.rstrip().endswith("B/s]") or not line.strip()


def failed_cleanly(tmp_path: Path, code: int, lines: list[str]) -> str:
    """The one error line, once checked that nothing else was said or left behind."""
    assert code == 1
    assert all(progress(line) for line in lines[:-1]), lines
    assert lines[-1].startswith("steelflow fetch: error: ")
    assert not (tmp_path / "raw").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".raw")]
    return lines[-1]


def archive_gets(server: KaggleServer) -> list[int]:
    return [status for method, url, status, _ in server.calls if STORAGE_HOST in url]


def test_a_complete_download_is_what_the_local_source_makes(
    kaggle, local_raw, home, monkeypatch, tmp_path, capsys, caplog
):
    give("KAGGLE_API_TOKEN", home, monkeypatch)
    caplog.set_level(logging.INFO, logger="steelflow.sources")
    code, lines = fetch(tmp_path / "raw", capsys)
    assert code == 0
    assert digest(tmp_path / "raw") == local_raw
    assert any("100%|" in line for line in lines), lines  # the client's progress bar
    size = len(kaggle.archive) / 1e6
    said = f"downloaded severstal-steel-defect-detection.zip from Kaggle: {size:.1f} MB"
    assert said in caplog.messages
    assert archive_gets(kaggle) == [200]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".raw")]


@pytest.mark.parametrize("place", PLACES)
def test_credentials_from_each_place_are_accepted(
    place, kaggle, local_raw, home, monkeypatch, tmp_path, capsys
):
    give(place, home, monkeypatch)
    code, lines = fetch(tmp_path / "raw", capsys)
    assert code == 0, lines
    assert digest(tmp_path / "raw") == local_raw
    auth = [auth for method, url, status, auth in kaggle.calls if url.endswith(DOWNLOAD)]
    assert auth == ["basic" if place == "kaggle.json" else "bearer"]


@pytest.mark.parametrize("place", ["access_token", "kaggle.json"])
def test_a_credentials_file_others_can_read_is_named_with_the_fix(
    place, kaggle, home, monkeypatch, tmp_path, capsys, caplog
):
    give(place, home, monkeypatch)
    shared = home / ".kaggle" / place
    shared.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="steelflow.sources")
    code, lines = fetch(tmp_path / "raw", capsys)
    assert code == 0, lines
    assert f"{shared} can be read by other users of this machine: chmod 600 {shared}" in (
        caplog.messages
    )
    shared.chmod(0o600)
    caplog.clear()
    assert fetch(tmp_path / "again", capsys)[0] == 0
    assert not [m for m in caplog.messages if "other users" in m]


@pytest.mark.parametrize("place", PLACES)
def test_refused_credentials_are_one_line(place, kaggle, home, monkeypatch, tmp_path, capsys):
    give(place, home, monkeypatch, secret="KGAT_revoked00000000000000000000")
    code, lines = fetch(tmp_path / "raw", capsys)
    line = failed_cleanly(tmp_path, code, lines)
    assert len(lines) == 1 and "HTTP 401" in line and place in line
    assert "https://www.kaggle.com/settings/api" in line and "run again" in line
    assert archive_gets(kaggle) == []


@pytest.mark.parametrize("pasted", ["\r", "\u201d"])  # a Windows line end, a typographic quote
def test_a_token_pasted_with_a_stray_character_is_one_line_that_never_shows_it(
    pasted, kaggle, home, monkeypatch, tmp_path, capsys
):
    give("KAGGLE_API_TOKEN", home, monkeypatch, secret=TOKEN + pasted)
    code, lines = fetch(tmp_path / "raw", capsys)
    line = failed_cleanly(tmp_path, code, lines)
    assert len(lines) == 1 and "KAGGLE_API_TOKEN" in line and "cannot carry" in line
    assert TOKEN.removeprefix("KGAT_") not in line


@pytest.mark.parametrize(
    ("text", "why"),
    [('{"username": "steel-tester", "key": "8d9e', "not valid JSON"), ("{}", "not an object")],
)
def test_a_broken_kaggle_json_is_one_line_naming_it_not_no_credentials(
    text, why, kaggle, home, monkeypatch, tmp_path, capsys
):
    (home / ".kaggle" / "kaggle.json").write_text(text)
    code, lines = fetch(tmp_path / "raw", capsys)
    line = failed_cleanly(tmp_path, code, lines)
    assert len(lines) == 1 and f"{home / '.kaggle' / 'kaggle.json'}: {why}" in line
    assert "8d9e" not in line


def test_rules_not_accepted_is_one_line(kaggle, home, monkeypatch, tmp_path, capsys):
    give("access_token", home, monkeypatch)
    kaggle.rules_accepted = False
    code, lines = fetch(tmp_path / "raw", capsys)
    line = failed_cleanly(tmp_path, code, lines)
    assert len(lines) == 1 and "HTTP 403" in line and RULES_MESSAGE in line
    assert f"accept the competition rules at {RULES_URL} signed in as {USER}" in line


def test_a_download_cut_once_is_completed_by_the_clients_retry(
    kaggle, local_raw, home, monkeypatch, tmp_path, capsys
):
    give("KAGGLE_API_TOKEN", home, monkeypatch)
    kaggle.cut = 1
    code, lines = fetch(tmp_path / "raw", capsys)
    assert code == 0, lines
    assert digest(tmp_path / "raw") == local_raw
    assert len(archive_gets(kaggle)) == 2  # cut off, then fetched again after its pause


def test_a_download_cut_every_time_is_one_line_and_a_rerun_succeeds(
    kaggle, local_raw, home, monkeypatch, tmp_path, capsys
):
    give("KAGGLE_API_TOKEN", home, monkeypatch)
    kaggle.cut = 100
    pauses = []
    with monkeypatch.context() as patch:  # the client's pauses between retries (62 s in all)
        patch.setattr(time, "sleep", pauses.append)
        code, lines = fetch(tmp_path / "raw", capsys)
    line = failed_cleanly(tmp_path, code, lines)
    assert "ChunkedEncodingError" in line and "nothing was kept" in line and "run again" in line
    assert pauses and len(archive_gets(kaggle)) == len(pauses) + 1  # the client's own retries
    kaggle.cut = 0
    code, lines = fetch(tmp_path / "raw", capsys)
    assert code == 0, lines
    assert digest(tmp_path / "raw") == local_raw


def test_a_cut_that_looks_complete_is_one_line_and_a_rerun_succeeds(
    kaggle, local_raw, home, monkeypatch, tmp_path, capsys
):
    """Without a Content-Length the client cannot tell a cut: the zip check does."""
    give("KAGGLE_API_TOKEN", home, monkeypatch)
    kaggle.content_length, kaggle.cut = False, 1
    code, lines = fetch(tmp_path / "raw", capsys)
    line = failed_cleanly(tmp_path, code, lines)
    assert "is not a valid zip" in line and "cut off; run again" in line
    code, lines = fetch(tmp_path / "raw", capsys)
    assert code == 0, lines
    assert digest(tmp_path / "raw") == local_raw


def test_an_expired_download_link_is_one_line(kaggle, home, monkeypatch, tmp_path, capsys):
    give("KAGGLE_API_TOKEN", home, monkeypatch)
    kaggle.link_expired = True
    code, lines = fetch(tmp_path / "raw", capsys)
    line = failed_cleanly(tmp_path, code, lines)
    assert len(lines) == 1 and "403" in line and "link" in line and "run again" in line
    assert "Signature" not in line and "accept the competition rules" not in line
