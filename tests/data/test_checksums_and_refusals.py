"""Published checksums and sizes (MD5 beside SHA-256), an over-long ``.part`` file, and what a 401/403
means from a host that needs a login and from one that does not (S3, Dataverse, open PhysioNet).

The server answers as the real hosts do (see conftest): 416 with ``Content-Range: bytes */N`` for
a range past the end of the file, 403 from an open S3 bucket for an expired or withdrawn object."""

import hashlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data.datasets import ham10000, hemorrhage, isic2020, vindr_mammo
from eqpo.data.fetch import DownloadError, download, mismatch, obtain
from eqpo.data.prepare import prepare
from eqpo.data.sources import Access, DatasetSource, MissingDataError, RemoteFile

PAYLOAD = np.random.default_rng(7).bytes(200_000)
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def served(tmp_path, file_server):
    directory = tmp_path / "srv"
    directory.mkdir()
    (directory / "blob.zip").write_bytes(PAYLOAD)
    return file_server(directory) + "/blob.zip"


def test_md5_and_size_are_verified_before_the_file_is_kept(tmp_path, served):
    dest = download(served, tmp_path / "a.zip", md5=MD5, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match=f"MD5 {MD5}, expected {'0' * 32}"):
        download(served, tmp_path / "b.zip", md5="0" * 32)
    with pytest.raises(DownloadError, match=f"size {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        download(served, tmp_path / "c.zip", size=len(PAYLOAD) + 1)
    assert not list(tmp_path.glob("[bc].zip*"))  # neither the file nor its part is left to pass for it


def test_an_existing_file_that_does_not_match_is_downloaded_again(tmp_path, served):
    dest = tmp_path / "a.zip"
    dest.write_bytes(PAYLOAD[:-1] + b"!")  # same size, different content
    download(served, dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD


def test_mismatch_checks_size_sha256_and_md5(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert mismatch(path, hashlib.sha256(b"abc").hexdigest(), "900150983cd24fb0d6963f7d28e17f72", 3) is None
    assert mismatch(path, md5="900150983CD24FB0D6963F7D28E17F72") is None  # hex case does not matter
    assert mismatch(path, size=4) == "size 3 bytes, expected 4"
    assert mismatch(path, sha256="0" * 64).startswith("SHA256 ba7816bf")
    assert mismatch(path, md5="0" * 32) == "MD5 900150983cd24fb0d6963f7d28e17f72, expected " + "0" * 32


@pytest.mark.parametrize("extra", [1, 50_000])
def test_a_part_file_longer_than_the_remote_file_restarts_the_download(tmp_path, served, extra, capsys):
    """The server answers the resume request with 416 and the file's size: the part file cannot be a
    prefix of it, so it is dropped and the file downloaded afresh (no size or checksum given)."""
    dest = tmp_path / "a.zip"
    dest.with_name("a.zip.part").write_bytes(PAYLOAD + b"x" * extra)
    download(served, dest)
    assert dest.read_bytes() == PAYLOAD
    assert "downloading it afresh" in capsys.readouterr().err


def test_a_complete_part_file_is_taken_as_it_is(tmp_path, served):
    dest = tmp_path / "a.zip"
    dest.with_name("a.zip.part").write_bytes(PAYLOAD)  # a run killed just before the rename
    download(served, dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD


def test_a_part_file_longer_than_the_published_size_restarts(tmp_path, file_server):
    """A server whose 416 does not say the file's size: the published size tells the part file is
    too long before anything is asked."""
    directory = tmp_path / "srv"
    directory.mkdir()
    (directory / "blob.zip").write_bytes(PAYLOAD)
    url = file_server(directory, bare_416=True) + "/blob.zip"
    dest = tmp_path / "out" / "blob.zip"
    dest.parent.mkdir()
    dest.with_name("blob.zip.part").write_bytes(PAYLOAD + b"junk")
    download(url, dest, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_a_local_part_file_longer_than_the_source_restarts(tmp_path):
    source = tmp_path / "blob.zip"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "blob.zip"
    dest.parent.mkdir()
    dest.with_name("blob.zip.part").write_bytes(PAYLOAD + b"junk")
    download(source.as_uri(), dest)
    assert dest.read_bytes() == PAYLOAD


def test_obtain_passes_the_published_checksums_and_stops_before_extracting(tmp_path, served):
    spec = PAPER_DATASETS["ISIC-2020"]
    source = DatasetSource(
        spec=spec,
        access=Access.OPEN_URL,
        landing_page="https://example.org/isic",
        license="test",
        expected=("x/",),
        preprocess=lambda *a: None,
        remote=(RemoteFile(served, "blob.zip", extract=True, md5="f" * 32),),
    )
    with pytest.raises(DownloadError, match="checksum mismatch.*MD5"):
        obtain(source, tmp_path / "raw")
    assert not (tmp_path / "raw" / ".blob.zip.extracted").exists() and not (tmp_path / "raw" / "blob.zip").exists()


def test_the_published_checksums_are_pinned():
    metadata = next(item for item in ham10000.SOURCE.remote if item.name == ham10000.METADATA)
    assert metadata.md5 == "8f85fb1aa29d80a2797247e434deb79d"  # Dataverse, HAM10000 v4.0, file 4338392
    images = next(item for item in isic2020.SOURCE.remote if item.name == isic2020.IMAGES_ZIP)
    assert images.size == 24_707_698_022 and images.extract


def _open_source(url: str) -> DatasetSource:
    return DatasetSource(
        spec=PAPER_DATASETS["PAD-UFES-20"],
        access=Access.OPEN_URL,
        landing_page="https://example.org/pad",
        license="CC BY 4.0",
        expected=("metadata.csv",),
        preprocess=lambda *a: None,
        remote=(RemoteFile(url, "metadata.csv"),),
    )


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_from_an_open_host_does_not_blame_credentials(tmp_path, file_server, status):
    url = file_server(tmp_path, refuse=status) + "/metadata.csv"
    with pytest.raises(MissingDataError) as err:
        obtain(_open_source(url), tmp_path / "raw")
    text = str(err.value)
    assert f"refused the download (HTTP {status}) although it needs no login" in text
    assert "link may have expired" in text and "landing page" in text and "https://example.org/pad" in text
    assert "credentials" not in text.lower() and "agreement" not in text.lower()


def test_a_refusal_from_a_credentialed_host_names_the_credentials_and_agreement(tmp_path, file_server, monkeypatch):
    monkeypatch.setenv("PHYSIONET_USERNAME", "ann")
    monkeypatch.setenv("PHYSIONET_PASSWORD", "wrong")
    base = file_server(tmp_path, refuse=403)
    source = replace(
        vindr_mammo.SOURCE,
        remote=tuple(RemoteFile(f"{base}/{item.name}", item.name) for item in vindr_mammo.SOURCE.remote),
    )
    with pytest.raises(MissingDataError) as err:
        obtain(source, tmp_path / "raw")
    text = str(err.value)
    assert "refused access (HTTP 403): check the credentials" in text and "data use agreement" in text
    assert "needs no login" not in text and vindr_mammo.LANDING_PAGE in text


def test_credentials_sent_to_an_open_host_are_not_blamed_for_its_refusal(tmp_path, file_server, monkeypatch):
    """ct-ich 1.2.0 is open; PhysioNet credentials are sent when set. A 403 there is the open-host case."""
    monkeypatch.setenv("PHYSIONET_USERNAME", "ann")
    monkeypatch.setenv("PHYSIONET_PASSWORD", "pw")
    url = file_server(tmp_path, refuse=403) + "/hemorrhage_diagnosis.csv"
    source = replace(hemorrhage.JPEG_SOURCE, remote=(RemoteFile(url, "hemorrhage_diagnosis.csv"),))
    with pytest.raises(MissingDataError, match="although it needs no login"):
        obtain(source, tmp_path / "raw")


def test_a_withdrawn_file_is_unavailable_and_can_be_skipped(tmp_path, file_server):
    """A 404 (a file taken down) stops with the dataset's instructions, and data.skip_unavailable
    leaves the dataset out instead of failing the run."""
    url = file_server(tmp_path) + "/gone.csv"
    source = replace(hemorrhage.JPEG_SOURCE, remote=(RemoteFile(url, "hemorrhage_diagnosis.csv"),))
    with pytest.raises(MissingDataError) as err:
        prepare(source, tmp_path / "data")
    assert "HTTP 404" in str(err.value) and "withdrawn or moved" in str(err.value)
    assert hemorrhage.LANDING_PAGES["1.2.0"] in str(err.value)
    table = prepare(source, tmp_path / "data", skip_unavailable=True)
    assert table.empty and pd.read_parquet(tmp_path / "data" / "Hemorrhage" / "table.parquet").empty
