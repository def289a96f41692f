"""Downloads people can watch and trust: a progress bar with bytes, rate and time left; transient
failures (dropped or reset connections, timeouts, HTTP 5xx) retried with backoff, resuming from the
.part file with HTTP Range; a failure that remains ends with one message naming the URL, what failed
and that rerunning resumes, without a traceback.

The server is a loopback HTTP server whose misbehaviour is scripted per request."""

import hashlib
import http.server
import threading
import time

import numpy as np
import pytest

from eqpo.data import fetch
from eqpo.data.fetch import DownloadError, RemoteFileNotFound, download, download_all

PAYLOAD = np.random.default_rng(7).bytes(200_000)


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /blob.bin (Range supported). ``script`` is a list of what to do on each
    request in turn; once it is used up, requests are served normally. Actions:
    ("drop", n): headers for the full remainder, then only n bytes, then close the connection;
    ("reset",): close the connection without answering; ("status", code): answer with that code;
    ("sleep", s): wait s seconds before answering normally."""

    script: list = []
    seen: list = []  # (Range header or None) per request

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.seen.append(self.headers.get("Range"))
        action = self.script.pop(0) if self.script else ("serve",)
        if action[0] == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if action[0] == "status":
            self.send_response(action[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if action[0] == "sleep":
            time.sleep(action[1])
        if self.path != "/blob.bin":
            self.send_error(404)
            return
        start = int(self.headers["Range"][6:].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        body = PAYLOAD[start:]
        if action[0] == "drop":
            self.wfile.write(body[: action[1]])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def flaky(monkeypatch):
    """Returns start(script) -> (url, seen): a fresh server following ``script``."""
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.01)  # retries without the real waits
    servers = []

    def start(script):
        handler = type("Handler", (_Flaky,), {"script": list(script), "seen": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/blob.bin", handler.seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_dropped_connections_are_resumed_with_range_requests(tmp_path, flaky):
    url, seen = flaky([("drop", 50_000), ("drop", 30_000)])
    dest = download(url, tmp_path / "blob.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD
    # first from 0, then from the 50,000 bytes kept, then from 80,000
    assert seen == [None, "bytes=50000-", "bytes=80000-"]
    assert not (tmp_path / "blob.bin.part").exists()


def test_reset_connections_timeouts_and_5xx_are_retried(tmp_path, flaky, capsys):
    url, seen = flaky([("reset",), ("status", 503), ("sleep", 1.0), ("status", 502)])
    download(url, tmp_path / "blob.bin", timeout=0.3)
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD
    assert len(seen) == 5
    err = capsys.readouterr().err
    assert "retry 1 of 5" in err and "retry 4 of 5" in err and "HTTP 503" in err and "HTTP 502" in err


def test_a_failure_that_remains_is_one_message_and_a_rerun_resumes(tmp_path, flaky):
    url, seen = flaky([("drop", 40_000)] + [("status", 500)] * 3)
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "blob.bin", retries=3)
    text = str(err.value)
    assert url in text and "after 4 attempts" in text and "HTTP 500" in text
    assert "40000 bytes are kept" in text and "run the same command again to resume" in text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained urllib/requests traceback
    assert len(seen) == 4
    # the rerun (the server is well again) continues from the 40,000 bytes
    download(url, tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD and seen[-1] == "bytes=40000-"


def test_not_found_and_client_errors_are_not_retried(tmp_path, flaky):
    url, seen = flaky([("status", 404)])
    with pytest.raises(RemoteFileNotFound, match="404"):
        download(url, tmp_path / "a.bin")
    assert len(seen) == 1
    url, seen = flaky([("status", 400)])
    with pytest.raises(DownloadError, match="HTTP 400"):
        download(url, tmp_path / "b.bin")
    assert len(seen) == 1


def test_unknown_host_fails_at_once_with_a_clear_message(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(fetch.time, "sleep", waits.append)
    with pytest.raises(DownloadError) as err:
        download("http://no-such-host.invalid/x.zip", tmp_path / "x.zip")
    assert waits == []  # not retried with backoff
    assert "no-such-host.invalid" in str(err.value) and "no network, or the host name is wrong" in str(err.value)


def test_progress_bar_shows_bytes_rate_and_time_left(tmp_path, flaky, capsys):
    url, _ = flaky([])
    download(url, tmp_path / "blob.bin")
    err = capsys.readouterr().err
    # tqdm's bytes bar: name, total size (195k = 200,000 / 1024), rate in B/s and the time-left field
    assert "blob.bin" in err and "195k/195k" in err and "B/s]" in err and "<00:00" in err
    assert "100%" in err


def test_progress_bar_starts_at_the_resumed_offset(tmp_path, flaky, capsys):
    url, _ = flaky([])
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:102_400])  # 100k already there
    download(url, tmp_path / "blob.bin")
    err = capsys.readouterr().err
    assert "100k/195k" in err  # the bar's first line counts the kept bytes
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_many_files_share_one_bar_and_missing_ones_are_listed(tmp_path, file_server, capsys):
    served = tmp_path / "srv"
    served.mkdir()
    for i in range(5):
        (served / f"{i}.txt").write_text(str(i) * (i + 1))
    base = file_server(served)
    jobs = [(f"{base}/{i}.txt", tmp_path / "out" / f"{i}.txt", None) for i in range(6)]  # 5.txt is not served
    missing = download_all(jobs, threads=2, desc="files", skip_not_served=True)
    assert missing == [f"{base}/5.txt"]
    assert [(tmp_path / "out" / f"{i}.txt").read_text() for i in range(5)] == ["0", "11", "222", "3333", "44444"]
    err = capsys.readouterr().err
    assert "6/6" in err and "file/s" in err
    with pytest.raises(RemoteFileNotFound):
        download_all(jobs, threads=1)


def test_a_failed_download_in_a_rule_ends_its_log_with_the_message(tmp_path, flaky, monkeypatch):
    """Through the rule adapter: the log's last line is the message (URL, what failed, rerun
    resumes), with no traceback in it."""
    from dataclasses import replace

    from eqpo.data.datasets import isic2020
    from eqpo.data.sources import RemoteFile
    from eqpo.workflow.pipeline import logged, run_prepare_dataset

    url, _ = flaky([("status", 503)] * 10)
    source = replace(
        isic2020.SOURCE, remote=tuple(RemoteFile(url, item.name, None, item.extract) for item in isic2020.SOURCE.remote)
    )
    monkeypatch.setattr("eqpo.data.prepare.get_sources", lambda name, release=None: [source])
    log = tmp_path / "prepare.log"
    with pytest.raises(SystemExit) as stop:
        with logged(log):
            run_prepare_dataset("ISIC-2020", tmp_path / "data", 0, [0.7, 0.15, 0.15], False)
    text = log.read_text()
    last = text.rstrip("\n").splitlines()[-1]
    assert last == str(stop.value.code)
    assert last.startswith("ISIC-2020: download of " + url) and "run the same command again to resume" in last
    assert "Traceback" not in text


def test_the_command_line_ends_a_failed_download_with_one_line(tmp_path, flaky, monkeypatch, capsys):
    from dataclasses import replace

    from eqpo.data.datasets import isic2020
    from eqpo.data.prepare import main
    from eqpo.data.sources import RemoteFile

    url, _ = flaky([("status", 500)] * 10)
    source = replace(isic2020.SOURCE, remote=(RemoteFile(url, "ISIC_2020_Training_GroundTruth.csv"),))
    monkeypatch.setattr("eqpo.data.prepare.get_sources", lambda name, release=None: [source])
    assert main(["ISIC-2020", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        err.rstrip("\n")
        .splitlines()[-1]
        .startswith(f"download of {url} failed after 6 attempts: the server answered HTTP 500")
    )
    assert "Traceback" not in err


def test_git_clones_show_git_progress_and_fail_with_git_message(tmp_path, capsys):
    import subprocess

    from eqpo.data.fetch import git_clone

    repo = tmp_path / "origin"
    repo.mkdir()
    (repo / "clinical_variables.csv").write_text("patient_id\n1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "data"], check=True)
    git_clone(f"file://{repo}", tmp_path / "clone")
    assert (tmp_path / "clone" / "clinical_variables.csv").read_text() == "patient_id\n1\n"
    err = capsys.readouterr().err
    assert "Cloning into" in err and "Receiving objects: 100%" in err
    with pytest.raises(IOError, match=r"git clone file://.*absent failed: fatal: .*absent"):
        git_clone(f"file://{tmp_path / 'absent'}", tmp_path / "other")
