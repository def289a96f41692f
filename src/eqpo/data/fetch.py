"""Downloading: resumable HTTP(S) and file:// transfers with progress bars, retries and checksums;
credentials, git, archives.

Every transfer goes through ``<dest>.part``: an interrupted one (a killed job, a dropped connection)
resumes from the bytes already there with an HTTP Range request, on the next attempt or on the next
run. Transient failures (reset or refused connections, timeouts, truncated bodies, HTTP 429 and 5xx)
are retried with exponential backoff; a failure that remains raises :class:`DownloadError`, whose
one-line message names the URL, what failed and that rerunning resumes. A progress bar (bytes, rate,
time left) is written to stderr, i.e. to the rule's log under Snakemake.

Credentials are never asked for interactively. PhysioNet: ``PHYSIONET_USERNAME`` /
``PHYSIONET_PASSWORD`` or a ``~/.netrc`` entry for the host. Kaggle: ``KAGGLE_USERNAME`` /
``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``. Missing credentials raise :class:`MissingDataError`
with the dataset's instructions.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from eqpo.data.sources import Access, DatasetSource, MissingDataError, RemoteFile

CHUNK = 1 << 20
KAGGLE_API = "https://www.kaggle.com/api/v1/datasets/download/{dataset}"
RETRIES = 5  # attempts after the first one
BACKOFF_S = 2.0  # wait before retry k (0-based): BACKOFF_S * 2**k seconds, at most MAX_WAIT_S
MAX_WAIT_S = 60.0
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "eqpo-data/2 (+https://github.com; resumable downloader)"


class DownloadError(IOError):
    """A download that failed for good: the message names the URL, what failed and what to do."""


class RemoteFileNotFound(DownloadError, FileNotFoundError):
    """The server has no such file (HTTP 404, or a missing file:// path); never retried."""


class _Transient(Exception):
    """One attempt failed in a way worth retrying (kept internal: callers see DownloadError)."""


_local = threading.local()


def _session() -> requests.Session:
    """One keep-alive session per thread (requests sessions are not thread-safe)."""
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
        _local.session.headers["User-Agent"] = USER_AGENT
    return _local.session


def digest_of(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file (``algorithm``: any hashlib name, e.g. "sha256", "md5")."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    return digest_of(path, "sha256")


def mismatch(path: Path, sha256: str | None = None, md5: str | None = None, size: int | None = None) -> str | None:
    """How a file differs from what its publisher states (size in bytes, checked first as it is
    cheap; SHA-256; MD5), or None when it matches everything given."""
    if size is not None and path.stat().st_size != size:
        return f"size {path.stat().st_size} bytes, expected {size}"
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            got = digest_of(path, algorithm)
            if got != expected.lower():
                return f"{algorithm.upper()} {got}, expected {expected.lower()}"
    return None


def _bar(name: str, total: int | None, initial: int, progress) -> tqdm:
    """A bytes progress bar (size, rate, time left) on stderr; ``progress`` False hides it."""
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        file=sys.stderr,
        mininterval=1.0,
        disable=not progress,
        leave=True,
    )


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    credentials: tuple[str, str] | None = None,
    timeout: float = 60.0,
    retries: int | None = None,
    progress: bool = True,
    md5: str | None = None,
    size: int | None = None,
    credentialed: bool | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` through ``dest.part``, resuming a partial transfer with an HTTP
    Range request and retrying transient failures (``retries`` extra attempts, default
    :data:`RETRIES`, with exponential backoff); verify the size (bytes), SHA-256 and MD5 given;
    rename into place only when they match. A part file longer than the remote file (or than
    ``size``) is discarded and the download restarts.

    An existing ``dest`` that matches (or with nothing to check) is kept as it is. Raises
    :class:`RemoteFileNotFound` (404), :class:`MissingDataError` (401/403: ``credentialed``, default
    whether credentials are sent, says whether the host needs a login, which the message names) or
    :class:`DownloadError` (a checksum mismatch, or anything else that did not go away).
    """
    dest = Path(dest)
    if dest.exists() and mismatch(dest, sha256, md5, size) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if size is not None and part.exists() and part.stat().st_size > size:
        part.unlink()  # longer than the published file: not a prefix of it
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        _copy_resuming(Path(urllib.request.url2pathname(parsed.path)), part, progress)
    else:
        login = credentials is not None if credentialed is None else credentialed
        _http_with_retries(url, part, credentials, timeout, RETRIES if retries is None else retries, progress, login)
    problem = mismatch(part, sha256, md5, size)
    if problem is not None:
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: {problem}; the partial file was removed, run again to "
            "download it afresh (if it keeps failing, the publisher changed the file: see the "
            "landing page)"
        )
    os.replace(part, dest)
    return dest


def _copy_resuming(source: Path, part: Path, progress: bool = True) -> None:
    if not source.exists():
        raise RemoteFileNotFound(f"{source} does not exist")
    done = part.stat().st_size if part.exists() else 0
    if done > source.stat().st_size:  # longer than the source: not a prefix of it, start again
        part.unlink()
        done = 0
    with (
        open(source, "rb") as src,
        open(part, "ab") as out,
        _bar(part.name[:-5], source.stat().st_size, done, progress) as bar,
    ):
        src.seek(done)
        for block in iter(lambda: src.read(CHUNK), b""):
            out.write(block)
            bar.update(len(block))


def _http_with_retries(
    url: str, part: Path, credentials, timeout: float, retries: int, progress: bool, credentialed: bool = False
) -> None:
    for attempt in range(retries + 1):
        try:
            _http_attempt(url, part, credentials, timeout, progress, credentialed)
            return
        except _Transient as err:
            kept = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(
                    f"download of {url} failed after {retries + 1} attempts: {err}. {kept} bytes are kept in "
                    f"{part}; run the same command again to resume from there"
                ) from None
            wait = min(BACKOFF_S * 2**attempt, MAX_WAIT_S)
            print(
                f"{url}: {err}; retry {attempt + 1} of {retries} in {wait:g} s, resuming at byte {kept}",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)


def refused(url: str, status: int, credentialed: bool) -> str:
    """What a 401/403 means: from a host that needs a login, the credentials or the agreement; from
    an open host, an expired or withdrawn link or a refused client (never the credentials)."""
    if credentialed:
        return (
            f"{url} refused access (HTTP {status}): check the credentials and that this account has accepted "
            "the data use agreement on the landing page"
        )
    return (
        f"{url} refused the download (HTTP {status}) although it needs no login: the link may have expired or "
        "the file been withdrawn or moved, or the host refused this client (rate limit, blocked network). Try "
        "again later or from another network, or open the landing page for the current link and place the file "
        "by hand"
    )


def _remote_length(response) -> int | None:
    """The full size from a Content-Range header ("bytes 0-9/10", or "bytes */10" with a 416)."""
    total = response.headers.get("Content-Range", "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _http_attempt(
    url: str, part: Path, credentials, timeout: float, progress: bool, credentialed: bool = False
) -> None:
    """One GET, resumed from the part file; raises _Transient for what a retry may fix."""
    done = part.stat().st_size if part.exists() else 0
    # identity encoding: Range offsets and Content-Length then count the bytes written to the file
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={done}-"} if done else {})}
    try:
        response = _session().get(url, headers=headers, auth=credentials, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as err:
        if _unknown_host(err):  # no network, or a wrong host name: waiting will not help
            raise DownloadError(
                f"download of {url} failed: {_reason(err)} (no network, or the host name is "
                "wrong); run the same command again once the host can be reached, it resumes "
                "from the part file"
            ) from None
        raise _Transient(f"no connection ({_reason(err)})") from None
    with response:
        status = response.status_code
        if status == 416:  # nothing after `done`: complete, unless the part file is longer than the remote file
            remote = _remote_length(response)
            if remote is None or done == remote:
                return
            print(
                f"{url}: the partial file has {done} bytes but the server's file {remote}; downloading it afresh",
                file=sys.stderr,
                flush=True,
            )
            part.unlink()
            return _http_attempt(url, part, credentials, timeout, progress, credentialed)
        if status in (401, 403):
            raise MissingDataError(refused(url, status, credentialed))
        if status == 404:
            raise RemoteFileNotFound(f"{url} is not on the server (HTTP 404)")
        if status in RETRY_STATUS:
            raise _Transient(f"the server answered HTTP {status} {response.reason}")
        if status >= 400:
            raise DownloadError(f"download of {url} failed: the server answered HTTP {status} {response.reason}")
        resumed = status == 206
        if not resumed:
            done = 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None and length.isdigit() else None
        got = 0
        try:
            with open(part, "ab" if resumed else "wb") as out, _bar(part.name[:-5], total, done, progress) as bar:
                # read1: whatever has arrived (up to CHUNK), so a broken connection loses no received byte
                for block in iter(lambda: response.raw.read1(CHUNK), b""):
                    out.write(block)
                    got += len(block)
                    bar.update(len(block))
        except (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError, TimeoutError) as err:
            raise _Transient(f"the connection broke after {done + got} bytes ({type(err).__name__})") from None
        if total is not None and done + got < total:
            raise _Transient(f"the connection closed after {done + got} of {total} bytes")


def _cause(err: Exception) -> Exception:
    """The urllib3 error behind a requests error (MaxRetryError.reason), else the error itself."""
    inner = err.args[0] if err.args and isinstance(err.args[0], Exception) else err
    return getattr(inner, "reason", None) or inner


def _unknown_host(err: Exception) -> bool:
    from urllib3.exceptions import NameResolutionError

    return isinstance(_cause(err), NameResolutionError)


def _reason(err: Exception) -> str:
    """A short account of a requests/urllib3 error: its kind and its innermost message."""
    cause = _cause(err)
    text = str(cause)
    if ": " in text and text.startswith(("<", "HTTP")):  # "<urllib3.connection...>: Failed to ..." -> the message
        text = text.split(": ", 1)[1]
    return f"{type(cause).__name__}: {text}"


def download_all(
    jobs: Sequence[tuple[str, Path, str | None]],
    credentials=None,
    threads: int = 4,
    desc: str = "files",
    skip_not_served: bool = False,
    credentialed: bool | None = None,
) -> list[str]:
    """Download many (url, dest, sha256) files with one progress bar over the files (count, rate,
    time left) instead of one bar each. Returns the URLs the server does not have when
    ``skip_not_served`` (else that is an error); the first other failure stops the rest."""
    missing: list[str] = []
    with tqdm(total=len(jobs), unit="file", desc=desc, file=sys.stderr, mininterval=1.0) as bar:

        def one(job) -> None:
            url, dest, sha = job
            try:
                download(url, dest, sha, credentials, progress=False, credentialed=credentialed)
            except RemoteFileNotFound:
                if not skip_not_served:
                    raise
                missing.append(url)
            bar.update(1)

        pool = ThreadPoolExecutor(max_workers=max(1, threads))
        try:
            for _ in pool.map(one, jobs):
                pass
        finally:  # on the first failure the queued downloads are dropped
            pool.shutdown(wait=True, cancel_futures=True)
    return sorted(missing)


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


def _git(*args: str, what: str) -> str:
    """Run git, streaming its progress (stderr) to our stderr, i.e. the rule's log; returns stdout.
    A failure raises IOError("<what> failed: <git's fatal/error lines>")."""
    process = subprocess.Popen(["git", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail = b""
    for chunk in iter(lambda: process.stderr.read1(4096), b""):
        sys.stderr.write(chunk.decode(errors="replace"))
        tail = (tail + chunk)[-4000:]
    sys.stderr.flush()
    out = process.stdout.read().decode(errors="replace")
    if process.wait() != 0:
        text = tail.decode(errors="replace").replace("\r", "\n")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("fatal:", "error:"))] or lines[-1:] or ["no message"]
        raise OSError(f"{what} failed: {'; '.join(errors)}")
    return out


def git_head(repo: Path) -> str | None:
    """The commit checked out in ``repo`` (None when it is not a git clone)."""
    try:
        result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _resolves_to_head(repo: Path, rev: str) -> bool:
    result = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and result.stdout.strip() == git_head(repo)


def _checkout(repo: Path, url: str, rev: str) -> None:
    """Check out ``rev`` in ``repo``: a shallow fetch of just that revision (a full commit hash, tag
    or branch), else, for an abbreviated hash, a fetch of the whole history."""
    what = f"git fetch {url} {rev}"
    try:
        _git("-C", str(repo), "fetch", "--progress", "--depth", "1", url, rev, what=what)
        _git("-C", str(repo), "checkout", "--quiet", "--detach", "FETCH_HEAD", what=f"git checkout {rev}")
    except OSError:
        _git("-C", str(repo), "fetch", "--progress", url, what=f"git fetch {url}")
        _git("-C", str(repo), "checkout", "--quiet", "--detach", rev, what=f"git checkout {rev} (from {url})")


def git_clone(url: str, dest: Path, rev: str = "") -> None:
    """Clone ``url`` into ``dest`` at revision ``rev`` (a commit, tag or branch; "" = the default
    branch's head, shallow). An existing clone at another commit is moved to ``rev``; files placed
    by hand (not a clone) are left as they are."""
    dest = Path(dest)
    if (dest / ".git").exists():
        if rev and not _resolves_to_head(dest, rev):
            _checkout(dest, url, rev)
        return
    if dest.exists() and any(dest.iterdir()):
        return  # files placed by hand
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".clone")
    shutil.rmtree(tmp, ignore_errors=True)
    # git's own progress (objects, bytes, rate) goes to stderr, i.e. the rule's log, as it comes
    if rev:
        _git("init", "--quiet", str(tmp), what=f"git init {tmp}")
        _checkout(tmp, url, rev)
    else:
        _git("clone", "--progress", "--depth", "1", url, str(tmp), what=f"git clone {url}")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _safe_members(names: list[str], target: Path) -> None:
    root = target.resolve()
    for name in names:
        if not (root / name).resolve().is_relative_to(root):
            raise OSError(f"archive member {name!r} would be written outside {target}")


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
        raise OSError(f"{archive} is neither a zip nor a tar archive")
    if nested:
        for path in inner:
            extract(path, path.parent, nested=True)
            path.unlink()


def obtain(source: DatasetSource, raw_dir: Path) -> None:
    """Make ``raw_dir`` hold the dataset's expected files: nothing to do when they are there,
    else download by the source's access type, else raise :class:`MissingDataError`."""
    raw_dir = Path(raw_dir)
    if source.arrange is not None and raw_dir.exists():
        source.arrange(raw_dir)
    _pin_clone(source, raw_dir)
    missing = source.missing_files(raw_dir)
    if not missing:
        return
    try:
        _obtain_missing(source, raw_dir, missing)
    except MissingDataError as err:  # a refused download: tell the person what to place, and why
        if str(err).startswith(f"Dataset {source.name} is not available"):
            raise
        raise MissingDataError(source.instructions(raw_dir, missing, str(err))) from None
    except RemoteFileNotFound as err:  # withdrawn or moved: unavailable like a refused download
        raise MissingDataError(
            source.instructions(raw_dir, missing, f"{err}; the file may have been withdrawn or moved")
        ) from None
    if source.arrange is not None:
        source.arrange(raw_dir)
    missing = source.missing_files(raw_dir)
    if missing:
        raise MissingDataError(source.instructions(raw_dir, missing, "the download did not produce them"))


def _pin_clone(source: DatasetSource, raw_dir: Path) -> None:
    """A git source's existing clone at another commit than ``source.git_rev`` is moved to it."""
    clone = raw_dir / Path(source.expected[0]).parts[0]
    if source.access is not Access.GIT or not source.git_rev or not (clone / ".git").exists():
        return
    try:
        git_clone(source.git_url, clone, source.git_rev)
    except OSError as err:
        reason = f"the clone in {clone} is not at {source.git_rev}: {err}"
        raise MissingDataError(source.instructions(raw_dir, source.missing_files(raw_dir), reason)) from None


def _obtain_missing(source: DatasetSource, raw_dir: Path, missing: list[str]) -> None:
    if source.access is Access.MANUAL:
        raise MissingDataError(source.instructions(raw_dir, missing, "it must be downloaded by hand"))
    credentials = None
    if source.optional_login is Access.PHYSIONET:
        credentials = physionet_credentials()
    if source.access is Access.PHYSIONET:
        credentials = physionet_credentials()
        if credentials is None:
            raise MissingDataError(
                source.instructions(
                    raw_dir,
                    missing,
                    "no PhysioNet credentials (set PHYSIONET_USERNAME and PHYSIONET_PASSWORD, "
                    "or add a ~/.netrc entry for physionet.org)",
                )
            )
    if source.access is Access.KAGGLE:
        credentials = kaggle_credentials()
        if credentials is None:
            raise MissingDataError(
                source.instructions(
                    raw_dir,
                    missing,
                    "no Kaggle token (set KAGGLE_USERNAME and KAGGLE_KEY, or place ~/.kaggle/kaggle.json)",
                )
            )
    if source.access is Access.GIT:
        try:
            git_clone(source.git_url, raw_dir / Path(source.expected[0]).parts[0], source.git_rev)
        except OSError as err:  # offline, or the repository moved: tell the person what to place
            raise MissingDataError(source.instructions(raw_dir, missing, str(err))) from None
    remote = list(source.remote)
    if source.access is Access.KAGGLE and not remote:
        remote = [RemoteFile(KAGGLE_API.format(dataset=source.kaggle_dataset), "kaggle.zip", extract=True)]
    credentialed = source.access in (Access.PHYSIONET, Access.KAGGLE)
    for item in remote:
        path = download(
            item.url,
            raw_dir / item.name,
            item.sha256,
            credentials,
            md5=item.md5,
            size=item.size,
            credentialed=credentialed,
        )
        if item.extract:
            marker = raw_dir / f".{item.name}.extracted"
            if not marker.exists():
                extract(path, raw_dir)
                marker.touch()
    if source.fetch is not None:
        source.fetch(source, raw_dir, credentials)
