"""Downloading: resumable HTTP(S) and file:// transfers, checksums, credentials, git, archives.

Credentials are never asked for interactively. PhysioNet: ``PHYSIONET_USERNAME`` /
``PHYSIONET_PASSWORD`` or a ``~/.netrc`` entry for the host. Kaggle: ``KAGGLE_USERNAME`` /
``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``. Missing credentials raise :class:`MissingDataError`
with the dataset's instructions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import netrc
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from .sources import Access, DatasetSource, MissingDataError, RemoteFile

CHUNK = 1 << 20
KAGGLE_API = "https://www.kaggle.com/api/v1/datasets/download/{dataset}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _auth_header(url: str, credentials: tuple[str, str] | None) -> dict[str, str]:
    if credentials is None:
        return {}
    token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def download(url: str, dest: Path, sha256: str | None = None, credentials: tuple[str, str] | None = None,
             timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` through ``dest.part``, resuming a partial transfer with an HTTP
    Range request; verify the SHA-256 when given; rename into place only when complete.

    An existing ``dest`` with the right checksum (or none to check) is kept as it is.
    """
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if urllib.parse.urlparse(url).scheme == "file":
        _copy_resuming(Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)), part)
    else:
        _http_resuming(url, part, credentials, timeout)
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            raise IOError(f"checksum mismatch for {url}: expected {sha256}, got {got}; the partial file was removed, "
                          "run again to download it afresh")
    os.replace(part, dest)
    return dest


def _copy_resuming(source: Path, part: Path) -> None:
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    done = part.stat().st_size if part.exists() else 0
    with open(source, "rb") as src, open(part, "ab") as out:
        src.seek(done)
        shutil.copyfileobj(src, out, CHUNK)


def _http_resuming(url: str, part: Path, credentials: tuple[str, str] | None, timeout: float) -> None:
    done = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "eqpo-data/1", **_auth_header(url, credentials)}
    if done:
        headers["Range"] = f"bytes={done}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # the part file is already complete
            return
        if err.code in (401, 403):
            raise MissingDataError(f"{url} refused access ({err.code}): check the credentials and that the "
                                   "data use agreement has been accepted on the landing page") from None
        raise
    with response:
        resumed = response.status == 206
        with open(part, "ab" if resumed else "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)


def physionet_credentials(host: str = "physionet.org") -> tuple[str, str] | None:
    user, password = os.environ.get("PHYSIONET_USERNAME"), os.environ.get("PHYSIONET_PASSWORD")
    if user and password:
        return user, password
    try:
        entry = netrc.netrc().authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError):
        entry = None
    return (entry[0], entry[2]) if entry else None


def kaggle_credentials() -> tuple[str, str] | None:
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key:
        return user, key
    path = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if path.exists():
        blob = json.loads(path.read_text())
        return blob["username"], blob["key"]
    return None


def git_clone(url: str, dest: Path) -> None:
    """Shallow clone (or leave an existing clone as it is)."""
    if (dest / ".git").exists():
        return
    if dest.exists() and any(dest.iterdir()):
        return  # files placed by hand
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".clone")
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(["git", "clone", "--depth", "1", url, str(tmp)], capture_output=True, text=True)
    if result.returncode != 0:
        raise IOError(f"git clone {url} failed: {result.stderr.strip()}")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _safe_members(names: list[str], target: Path) -> None:
    root = target.resolve()
    for name in names:
        if not (root / name).resolve().is_relative_to(root):
            raise IOError(f"archive member {name!r} would be written outside {target}")


def extract(archive: Path, target: Path, nested: bool = True) -> None:
    """Extract a zip or tar archive into ``target`` (path traversal refused); with ``nested``, zips
    found inside are extracted next to themselves (PAD-UFES-20 ships images in nested zips)."""
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            _safe_members(handle.namelist(), target)
            handle.extractall(target)
            inner = [target / n for n in handle.namelist() if n.lower().endswith(".zip")]
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as handle:
            _safe_members(handle.getnames(), target)
            handle.extractall(target, filter="data")
            inner = [target / n for n in handle.getnames() if n.lower().endswith(".zip")]
    else:
        raise IOError(f"{archive} is neither a zip nor a tar archive")
    if nested:
        for path in inner:
            extract(path, path.parent, nested=True)
            path.unlink()


def obtain(source: DatasetSource, raw_dir: Path) -> None:
    """Make ``raw_dir`` hold the dataset's expected files: nothing to do when they are there,
    else download by the source's access type, else raise :class:`MissingDataError`."""
    raw_dir = Path(raw_dir)
    missing = source.missing_files(raw_dir)
    if not missing:
        return
    if source.access is Access.MANUAL:
        raise MissingDataError(source.instructions(raw_dir, missing, "it must be downloaded by hand"))
    credentials = None
    if source.access is Access.PHYSIONET:
        credentials = physionet_credentials()
        if credentials is None:
            raise MissingDataError(source.instructions(
                raw_dir, missing, "no PhysioNet credentials (set PHYSIONET_USERNAME and PHYSIONET_PASSWORD, "
                "or add a ~/.netrc entry for physionet.org)"))
    if source.access is Access.KAGGLE:
        credentials = kaggle_credentials()
        if credentials is None:
            raise MissingDataError(source.instructions(
                raw_dir, missing, "no Kaggle token (set KAGGLE_USERNAME and KAGGLE_KEY, or place ~/.kaggle/kaggle.json)"))
    if source.access is Access.GIT:
        try:
            git_clone(source.git_url, raw_dir / Path(source.expected[0]).parts[0])
        except IOError as err:  # offline, or the repository moved: tell the person what to place
            raise MissingDataError(source.instructions(raw_dir, missing, str(err))) from None
    remote = list(source.remote)
    if source.access is Access.KAGGLE and not remote:
        remote = [RemoteFile(KAGGLE_API.format(dataset=source.kaggle_dataset), "kaggle.zip", extract=True)]
    for item in remote:
        path = download(item.url, raw_dir / item.name, item.sha256, credentials)
        if item.extract:
            marker = raw_dir / f".{item.name}.extracted"
            if not marker.exists():
                extract(path, raw_dir)
                marker.touch()
    if source.fetch is not None:
        source.fetch(source, raw_dir, credentials)
    missing = source.missing_files(raw_dir)
    if missing:
        raise MissingDataError(source.instructions(raw_dir, missing, "the download did not produce them"))
