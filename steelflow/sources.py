"""Data sources for `steelflow fetch`: synthetic, Kaggle or local, each giving the Kaggle layout.

The layout of the output folder: train.csv (``ImageId,ClassId,EncodedPixels``),
train_images/ and test_images/ (JPEG or PNG files only, ``images.list_images``),
sample_submission.csv (any layout the competition has used), and test_truth.csv when
the truth is known (synthetic source).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from steelflow import synthetic
from steelflow.atomic import atomic_dir, atomic_path
from steelflow.config import local_path
from steelflow.errors import SteelflowError
from steelflow.images import check_image_bytes, check_size, list_images
from steelflow.io import read_masks, read_sample_ids
from steelflow.masks import MaskError, decoded

COMPETITION = "severstal-steel-defect-detection"
RULES_URL = f"https://www.kaggle.com/competitions/{COMPETITION}/rules"
TOKEN_FILES = ("access_token", "access_token.txt")  # in ~/.kaggle, where kagglesdk looks

log = logging.getLogger(__name__)


class SourceError(SteelflowError):
    """A data source that cannot give the Kaggle layout; the message says what to do."""


def fetch(data: dict, seed: int, out: Path, workers: int = 0) -> None:
    """Produce the Kaggle layout in ``out`` from the source ``data["source"]``, atomically;
    synthetic images are drawn by ``workers`` processes (0: one per CPU core)."""
    label = str(out)  # what error messages name the files after: the source the user gave
    with atomic_dir(out, "fetch") as tmp:
        if data["source"] == "synthetic":
            cfg = data["synthetic"]
            synthetic.generate(
                tmp,
                cfg["n_train"],
                cfg["n_test"],
                seed=seed,
                preset=cfg["preset"],
                jpeg_quality=cfg["jpeg_quality"],
                workers=workers or os.cpu_count() or 1,
            )
        elif data["source"] == "kaggle":
            download_kaggle(tmp)
        else:
            if not data.get("local_path"):
                raise SourceError("data.source is 'local' but data.local_path is not set")
            folder = copy_local(local_path(data["local_path"]), tmp)
            label = str(Path(data["local_path"], folder))
        check_layout(tmp, label=label)


def download_kaggle(out: Path) -> None:
    """Download the competition's zip into ``out`` with the official kaggle package and
    extract it there.

    The package's progress bar shows on stderr and one line gives the archive's size;
    every way the download can fail (credentials, rules, network, disk) is one
    SourceError that says what to do.
    """
    api = _kaggle_api()
    download = out / ".download"
    download.mkdir()
    try:
        # its notes on stdout name our temporary folder and, on a failure, offer a resume
        # that cannot happen (the folder goes); its progress bar is on stderr
        with contextlib.redirect_stdout(io.StringIO()):
            api.competition_download_files(COMPETITION, path=str(download), quiet=False)
    except Exception as e:
        error = _kaggle_error(e, api, out)
        if error is None:
            raise
        raise error from None
    archives = sorted(download.glob("*.zip"))
    if not archives:
        raise SourceError(
            f"the Kaggle download of {COMPETITION} holds no zip archive but "
            f"{sorted(os.listdir(download))}: update the kaggle package (pip install -U "
            "kaggle) and run again"
        )
    for archive in archives:
        log.info("downloaded %s from Kaggle: %.1f MB", archive.name, archive.stat().st_size / 1e6)
        try:
            zipfile.ZipFile(archive).close()
        except zipfile.BadZipFile as e:
            raise SourceError(
                f"the archive {archive.name} downloaded from Kaggle is not a valid zip ({e}): "
                "the download was probably cut off; run again"
            ) from None
        extract_zip(archive, out, f"{archive.name} downloaded from Kaggle")
    shutil.rmtree(download)


NEW_TOKEN = (
    "create a new token at https://www.kaggle.com/settings/api and set KAGGLE_API_TOKEN "
    "to it or save it to ~/.kaggle/access_token (or run `kaggle auth login`)"
)


def _kaggle_api():
    """The kaggle package's KaggleApi, authenticated; its help pages are kept off the screen."""
    quiet = io.StringIO()  # the package prints pages of help; our one line says it
    api = None
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            from kaggle.api.kaggle_api_extended import KaggleApi  # noqa: I001 (its import authenticates)

            api = KaggleApi()
            api.authenticate()
    except ModuleNotFoundError as e:
        if e.name != "kaggle":
            raise
        raise SourceError(
            "data.source is 'kaggle' but the kaggle package is not installed: "
            "pip install 'steelflow[workflow]' (or pip install kaggle), then run again"
        ) from None
    except SystemExit:  # it found no credentials it could use
        _check_legacy_file(Path(getattr(api, "config", "") or "."))
        token = _token_source()
        if token:
            raise SourceError(
                f"Kaggle does not accept the token in {token} (expired or revoked): {NEW_TOKEN}; "
                f"then accept the rules at {RULES_URL}"
            ) from None
        raise SourceError(
            "no Kaggle credentials: run `kaggle auth login`, or set KAGGLE_API_TOKEN, or save "
            "a token to ~/.kaggle/access_token (legacy: ~/.kaggle/kaggle.json); "
            f"then accept the rules at {RULES_URL}"
        ) from None
    except Exception as e:  # checking a token asks Kaggle: refused, or no network
        error = _kaggle_error(e, api, None)
        if error is None:
            raise
        raise error from None
    _warn_if_shared(api)
    return api


def _warn_if_shared(api) -> None:
    """Warn of a credentials file that other users of this machine can read, as the
    client does in what ``_kaggle_api`` keeps off the screen."""
    folder = Path.home() / ".kaggle"
    files = {Path(getattr(api, "config", "") or folder / "kaggle.json")}
    files |= {folder / name for name in (*TOKEN_FILES, "credentials.json")}
    for path in sorted(files):
        if path.is_file() and path.stat().st_mode & 0o077:
            log.warning("%s can be read by other users of this machine: chmod 600 %s", path, path)


def _check_legacy_file(path: Path) -> None:
    """Refuse a kaggle.json that is there but unusable, which the client passes over in
    silence (its "no credentials" would send the user looking for a file that exists)."""
    if not path.is_file():
        return
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # the message gives a position, never the content
        why = f"not valid JSON ({type(e).__name__}: {e})"
    else:
        if isinstance(values, dict) and {"username", "key"} <= values.keys():
            return
        why = 'not an object with "username" and "key"'
    raise SourceError(
        f"{path}: {why}: download it again from https://www.kaggle.com/settings/api, "
        f"or use an access token instead: {NEW_TOKEN}"
    )


def _token_source() -> str | None:
    """Where the kaggle package finds an access token, as kagglesdk looks (KAGGLE_API_TOKEN,
    then ~/.kaggle/access_token or .txt); None where there is none."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for name in TOKEN_FILES:
        if (Path.home() / ".kaggle" / name).is_file():
            return f"~/.kaggle/{name}"
    return None


def _credentials_source(api) -> str:
    """Where the credentials that ``api`` showed Kaggle came from, as the user gave them."""
    values = getattr(api, "config_values", None) or {}
    method = str(values.get("auth_method", ""))
    if method == "OAUTH":
        return "~/.kaggle/credentials.json (from `kaggle auth login`)"
    if method == "LEGACY_API_KEY":
        if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
            return "KAGGLE_USERNAME and KAGGLE_KEY"
        return str(getattr(api, "config", "~/.kaggle/kaggle.json"))
    return _token_source() or "the Kaggle credentials"


def _http_status(e: BaseException) -> int | None:
    """The HTTP status of a failed request: requests' HTTPError, or the ApiException of
    kaggle before 1.7; None for other failures."""
    response = getattr(e, "response", None)
    status = getattr(e, "status", None) or getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _kaggle_error(e: Exception, api, out: Path | None) -> SourceError | None:
    """The SourceError, saying what to do, for a failure of the kaggle package to
    authenticate (``out`` None) or to download into ``out``; None where ``e`` is none
    of these (a bug, which keeps its traceback)."""
    import requests
    import urllib3

    status = _http_status(e)
    # one line, whatever the server sent, and no signed link's query (it lets anyone
    # download) nor any credential (an error may quote the header that carried it)
    detail = _redact(re.sub(r"\?[^\s'\")]*", "", " ".join(str(e).split())))
    doing = "checking the credentials with Kaggle"
    if out is not None:
        doing = f"downloading {COMPETITION} from Kaggle"
    user = (getattr(api, "config_values", None) or {}).get("username")
    url = str(getattr(getattr(e, "response", None), "url", "") or "")
    if status == 401:
        return SourceError(
            f"Kaggle refused the credentials in {_credentials_source(api)} (HTTP 401: wrong, "
            f"expired or revoked): {NEW_TOKEN}; then run again"
        )
    if status == 403 and url and "CompetitionApiService" not in url:  # the storage's link
        return SourceError(
            f"the storage refused Kaggle's download link ({detail}); links expire "
            "and a new one is made on each try: check the computer's clock, then run again"
        )
    if status == 403:
        return SourceError(
            f"Kaggle refused the download (HTTP 403: {detail}): accept the competition rules "
            f"at {RULES_URL}" + (f" signed in as {user}" if user else "") + ", then run again"
        )
    if status == 429:
        return SourceError(
            f"Kaggle is limiting this account's requests (HTTP 429) while {doing}: "
            "wait a few minutes, then run again"
        )
    if status is not None:
        return SourceError(
            f"Kaggle answered HTTP {status} ({detail}) while {doing}: run again later; if it "
            "persists, update the kaggle package (pip install -U kaggle)"
        )
    if isinstance(e, OSError) and not isinstance(e, requests.RequestException):
        if out is None:  # the token file or kaggle's config folder
            return SourceError(
                f"could not read the Kaggle credentials ({detail}): make that file readable "
                "(and ~/.kaggle writable: kaggle keeps its settings there), then run again"
            )
        return SourceError(  # disk full, no permission
            f"could not write the Kaggle download in {out.parent} ({detail}): free space there "
            "(about twice the archive's size) or fetch to another --out, then run again"
        )
    refused_header = isinstance(e, (requests.exceptions.InvalidHeader, UnicodeEncodeError))
    if refused_header or (isinstance(e, ValueError) and str(e).startswith("Invalid header")):
        return SourceError(  # a header with a line end, or a non-ASCII quote, is refused
            f"the Kaggle credentials in {_credentials_source(api)} hold a character an HTTP "
            "header cannot carry (a line end, space or typographic quote pasted with them): "
            "save the bare token or key again, then run again"
        )
    if isinstance(e, (requests.RequestException, urllib3.exceptions.HTTPError, ValueError)):
        # no connection, timeout, cut off (ChunkedEncodingError, after the client's own
        # retries); ValueError: a size other than the Content-Length, or an answer not JSON
        kept = "" if out is None else " and nothing was kept"
        return SourceError(
            f"{doing} failed ({type(e).__name__}: {detail}){kept}: "
            "check the network connection, then run again"
        )
    return None


def _redact(text: str) -> str:
    """``text`` without any Kaggle credential: the values the client may have read, an
    access token's form (KGAT_...) and whatever follows Bearer or Basic."""
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    secrets = [os.environ.get(name, "") for name in ("KAGGLE_API_TOKEN", "KAGGLE_KEY")]
    with contextlib.suppress(OSError, ValueError):
        secrets.append(str(json.loads((folder / "kaggle.json").read_text()).get("key", "")))
    for name in TOKEN_FILES:
        with contextlib.suppress(OSError, ValueError):
            secrets.append((folder / name).read_text())
    for secret in {s.strip() for s in secrets if len(s.strip()) >= 8}:
        text = text.replace(secret, "***")
    return re.sub(
        r"\b(Bearer|Basic)\s+[^\s'\"]+|\bKGAT_\w+", lambda m: f"{m[1] or ''} ***".strip(), text
    )


IMAGE_ZIPS = ("train_images.zip", "test_images.zip")  # how Kaggle once shipped the images
PASSED_OVER = {"__MACOSX", "Thumbs.db"}  # what an archiver or a desktop adds, as hidden files


def _lacks(names: set[str]) -> str | None:
    """What of the competition's layout a source's top-level ``names`` lack (an image
    folder may be its zip, ``IMAGE_ZIPS``), or None."""
    for name in ("train.csv", "sample_submission.csv"):
        if name not in names:
            return name
    for name in ("train_images", "test_images"):
        if name not in names and f"{name}.zip" not in names:
            return f"folder {name}/"
    return None


def layout_folder(children: Callable[[str], set[str]], label: str) -> str:
    """Where in a source (``label``) the competition's files lie, checked before anything is
    copied: '' at its top, or 'FOLDER/' where its one entry is a folder holding them (the
    files zipped or downloaded with their folder). ``children(folder)`` names the entries
    of a folder of the source ('' its top)."""
    names = children("")
    lacking = _lacks(names)
    if lacking is None:
        return ""
    zips = sorted(n for n in names if n.endswith(".zip") and n not in IMAGE_ZIPS)
    others = {n for n in names if n not in PASSED_OVER and not n.startswith(".")}
    others -= {f"{COMPETITION}.zip"}  # where it was downloaded, beside what it extracted to
    if len(others) == 1:
        folder = f"{others.pop()}/"
        if _lacks(children(folder)) is None:
            log.info("%s: the competition's files are in %s; reading them there", label, folder)
            return folder
    hint = f" (it holds {zips[0]}: set data.local_path to that zip)" if zips else ""
    raise SourceError(
        f"{label}: {lacking} is missing{hint}; expected the competition's zip or the folder "
        "it extracts to (train.csv, sample_submission.csv, train_images/, test_images/)"
    )


def copy_local(source: Path, out: Path) -> str:
    """Copy a local Kaggle zip or extracted folder into ``out``, once its layout is found
    (``layout_folder``, whose answer it returns). In a folder the image folders may be
    zips of their own (``IMAGE_ZIPS``) and the competition's zip, downloaded beside what
    it extracted to, is passed over; any other zip is refused."""
    if not source.exists():
        raise SourceError(f"data.local_path {source} does not exist")
    if source.is_file():
        return extract_zip(source, out, layout=True)

    def children(inside: str) -> set[str]:
        try:
            return set(os.listdir(source / inside)) if (source / inside).is_dir() else set()
        except OSError as e:
            why = f"cannot be read ({e.strerror})"
            raise SourceError(f"data.local_path {source / inside}: {why}") from None

    folder = layout_folder(children, f"data.local_path {source}")
    source = source / folder
    own_zip = f"{COMPETITION}.zip"
    stray = [p.name for p in source.glob("*.zip") if p.name not in (*IMAGE_ZIPS, own_zip)]
    if stray:
        raise SourceError(
            f"data.local_path {source}: holds {stray[0]}, which is not part of the "
            f"competition's layout (its zip goes in data.local_path itself; inside the "
            f"folder only {' or '.join(IMAGE_ZIPS)}): move it out, then run again"
        )
    if (source / own_zip).is_file():
        log.info("passing over %s: its files are extracted beside it", source / own_zip)
    try:
        for item in source.iterdir():  # copies, not links: outputs must not alias the user's
            if item.is_dir():
                shutil.copytree(item, out / item.name)
            elif item.name != own_zip:
                shutil.copy2(item, out / item.name)
    except shutil.Error as e:  # copytree gathers each file's error: (source, target, why)
        why = re.sub(r"^\[Errno \d+\] ([^:]+).*", r"\1", str(e.args[0][0][2]))
        raise SourceError(_unwritten(f"data.local_path {source}", why)) from None
    except OSError as e:
        raise SourceError(_unwritten(f"data.local_path {source}", e.strerror or e)) from None
    for name in IMAGE_ZIPS:
        if (out / name).is_file():
            extract_zip(out / name, out, f"{source / name}")
            (out / name).unlink()
    return folder


def _unwritten(name: str, why) -> str:
    """The error line of data that could not be copied or extracted into the output."""
    return (
        f"{name}: could not be copied into the output ({why}): free space beside --out "
        "(as much as the data takes), then run again"
    )


def extract_zip(archive: Path, out: Path, name: str | None = None, layout: bool = False) -> str:
    """Extract ``archive`` (``name`` in messages) into ``out``, refusing any entry that would
    land outside it; a backslash in an entry's name (a zip made on Windows) separates
    folders. With ``layout``, only the folder of the competition's files is extracted
    (``layout_folder``, checked before anything is), and returned. Zips inside (Kaggle
    shipped train_images.zip and the like) are extracted too. A damaged archive or a full
    disk is one SourceError."""
    name = name or str(archive)
    root = out.resolve()
    folder = ""
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = zf.infolist()
            for entry in entries:  # what it is extracted as; the header keeps its own name
                entry.filename = entry.filename.replace("\\", "/")
                target = (root / entry.filename).resolve()
                if target != root and root not in target.parents:
                    raise SourceError(
                        f"{name}: entry {entry.orig_filename!r} would be extracted outside its "
                        "folder"
                    )
                if (entry.external_attr >> 16) & 0o170000 == 0o120000:
                    raise SourceError(f"{name}: entry {entry.orig_filename!r} is a symbolic link")
            if layout:
                names = [entry.filename for entry in entries]

                def children(inside: str) -> set[str]:
                    below = (n.removeprefix(inside) for n in names if n.startswith(inside))
                    return {n.split("/")[0] for n in below} - {""}

                folder = layout_folder(children, name)
                entries = [e for e in entries if e.filename.startswith(folder)]
                for entry in entries:
                    entry.filename = entry.filename.removeprefix(folder)
                entries = [e for e in entries if e.filename]
            zf.extractall(root, members=entries)
            inner = [e.filename for e in entries if e.filename.endswith(".zip")]
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise SourceError(f"{name}: not a valid zip archive, or damaged ({e})") from None
    except OSError as e:
        raise SourceError(_unwritten(name, e.strerror or e)) from None
    for entry in inner:
        extract_zip(root / entry, (root / entry).parent, f"{entry} inside {name}")
        (root / entry).unlink()
    return folder


def _check_image(path: Path, name: str) -> None:
    """Refuse an image that is not whole (``check_image_bytes``), not 1600x256, or does
    not decode."""
    try:
        data = path.read_bytes()
        check_image_bytes(data, name)
    except OSError as e:
        raise SourceError(f"{name}: cannot be read ({e.strerror})") from None
    except SteelflowError as e:  # not a whole JPEG or PNG
        raise SourceError(str(e)) from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_size(im.size[::-1], name)
            im.draft("L", (im.size[0] // 8, im.size[1] // 8))  # decode at 1/8 scale: fast
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise SourceError(f"{name}: cannot be read as an image ({e})") from None
    except SteelflowError as e:  # not 1600x256
        raise SourceError(str(e)) from None


def check_layout(root: Path, label: str) -> None:
    """Check the Kaggle layout in ``root`` and rewrite train.csv as defect rows only.

    Every file the later stages read is read here, so a layout they cannot use
    fails before training: every train.csv row needs its image, every image of
    sample_submission.csv its test image; every file of train_images/ and test_images/
    must be a JPEG or PNG (``list_images``) that is whole, decodes and is 1600x256.
    Errors name the file as it is in ``label``, the source the user gave.
    """
    lacking = _lacks(set(os.listdir(root)))
    if lacking:
        raise SourceError(f"{label}: {lacking} is missing")
    try:
        train = read_masks(root / "train.csv")
        test_ids = read_sample_ids(root / "sample_submission.csv")
    except SteelflowError as e:
        raise SourceError(str(e).replace(str(root), label)) from None
    defects = train[train.EncodedPixels != ""]
    if defects.empty:
        raise SourceError(
            f"{label}/train.csv: no defect masks; expected rows of ImageId,ClassId,EncodedPixels "
            "for the train images' defects"
        )
    for line, image in train.ImageId.items():
        if not (root / "train_images" / image).is_file():
            raise SourceError(
                f"{label}/train.csv, line {line}: image train_images/{image} is missing"
            )
    for image in test_ids:
        if not (root / "test_images" / image).is_file():
            raise SourceError(
                f"{label}/sample_submission.csv: image test_images/{image} is missing"
            )
    try:  # every mask decodes, and no two of an image overlap: named by the user's line
        for _ in tqdm(
            decoded(defects, f"{label}/train.csv"),
            "checking masks",
            len(defects),
            unit="mask",
            mininterval=2,
        ):
            pass
    except MaskError as e:
        raise SourceError(str(e)) from None
    try:
        images = list_images(root / "train_images") + list_images(root / "test_images")
    except SteelflowError as e:
        raise SourceError(str(e).replace(str(root), label)) from None
    for path in tqdm(images, desc="checking images", unit="img", mininterval=2):
        _check_image(path, f"{label}/{path.relative_to(root)}")
    with atomic_path(root / "train.csv") as tmp:  # a new file: never write through a link
        defects.to_csv(tmp, index=False)
