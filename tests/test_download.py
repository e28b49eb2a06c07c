"""download(): checksums, mirror fall-through and atomic writes, against a local HTTP server.

Every request goes to 127.0.0.1; no test touches the real mirrors.
"""
import hashlib
import http.server
import re
import socket
import threading
from collections import Counter

import pytest

from stnkit.data.download import MNIST_FILES, MNIST_MIRRORS, DownloadError, download, sha256

FILES = {"a.bin": bytes(range(256)) * 40, "b.bin": b"stnkit fixture\n" * 1000}
HASHES = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
TIMEOUT = 2.0


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves FILES under /<mode>/<name>; the mode says how the mirror misbehaves."""

    requests: Counter  # set per server
    release: threading.Event

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests[self.path] += 1
        mode, _, name = self.path.strip("/").partition("/")
        body = FILES.get(name)
        if body is None or mode == "missing":
            self.send_error(404)
            return
        if mode == "good":
            self._send(body)
        elif mode == "wrong":  # a complete response with the wrong content
            self._send(body[::-1])
        elif mode == "broken":  # promises more than it sends, then closes the connection
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif mode == "chunked":  # a chunked response that breaks off inside a chunk
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(body) + body[:100])
            self.wfile.flush()
            self.close_connection = True
        elif mode == "stall":  # headers, some bytes, then silence until the test ends
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:10])
            self.wfile.flush()
            self.release.wait(10)
        else:
            self.send_error(404)

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    """(base URL, request counter) of a threaded HTTP server on 127.0.0.1."""
    handler = type("Handler", (_Handler,), {"requests": Counter(), "release": threading.Event()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    handler.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def closed_port():
    """A local port with nothing listening on it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _only_targets(root, names):
    """The directory holds exactly `names`: no partial file, no leftover .part temp file."""
    assert sorted(p.name for p in root.iterdir()) == sorted(names)


def test_good_download(tmp_path, server):
    base, requests = server
    root = tmp_path / "new" / "dir"  # created on demand
    seen = []
    paths = download(root, HASHES, [base + "/good/"], timeout=TIMEOUT, progress=seen.append)
    assert paths == [root / "a.bin", root / "b.bin"]
    for p in paths:
        assert p.read_bytes() == FILES[p.name]
        assert sha256(p) == HASHES[p.name]
    _only_targets(root, FILES)
    assert seen == [f"downloading {base}/good/a.bin", f"downloading {base}/good/b.bin"]
    assert requests == {"/good/a.bin": 1, "/good/b.bin": 1}


def test_mirror_without_trailing_slash(tmp_path, server):
    base, _ = server
    download(tmp_path, {"a.bin": HASHES["a.bin"]}, [base + "/good"], timeout=TIMEOUT)
    assert (tmp_path / "a.bin").read_bytes() == FILES["a.bin"]


def test_present_file_is_not_fetched_again(tmp_path, server):
    base, requests = server
    download(tmp_path, HASHES, [base + "/good/"], timeout=TIMEOUT)
    assert sum(requests.values()) == 2
    paths = download(tmp_path, HASHES, [base + "/good/"], timeout=TIMEOUT)
    assert paths == [tmp_path / "a.bin", tmp_path / "b.bin"]
    assert sum(requests.values()) == 2


def test_present_file_with_wrong_hash_is_replaced(tmp_path, server):
    base, requests = server
    (tmp_path / "a.bin").write_bytes(b"stale")
    download(tmp_path, {"a.bin": HASHES["a.bin"]}, [base + "/good/"], timeout=TIMEOUT)
    assert (tmp_path / "a.bin").read_bytes() == FILES["a.bin"]
    assert requests == {"/good/a.bin": 1}


def test_wrong_checksum_mirror_is_skipped(tmp_path, server):
    base, requests = server
    paths = download(tmp_path, HASHES, [base + "/wrong/", base + "/good/"], timeout=TIMEOUT)
    assert [p.read_bytes() for p in paths] == [FILES["a.bin"], FILES["b.bin"]]
    assert requests == {"/wrong/a.bin": 1, "/good/a.bin": 1, "/wrong/b.bin": 1, "/good/b.bin": 1}
    _only_targets(tmp_path, FILES)


@pytest.mark.parametrize("mode", ["broken", "chunked", "missing"])
def test_bad_mirror_falls_through_without_partial_file(tmp_path, server, mode):
    base, requests = server
    download(tmp_path, {"a.bin": HASHES["a.bin"]}, [f"{base}/{mode}/", base + "/good/"], timeout=TIMEOUT)
    assert (tmp_path / "a.bin").read_bytes() == FILES["a.bin"]
    assert requests == {f"/{mode}/a.bin": 1, "/good/a.bin": 1}
    _only_targets(tmp_path, ["a.bin"])


@pytest.mark.parametrize(
    "mode, reason",
    [("broken", r"transfer broke off after 5120 of 11240 bytes"), ("chunked", "IncompleteRead"),
     ("wrong", "SHA-256 mismatch: got [0-9a-f]{64}, expected " + HASHES["a.bin"]), ("missing", "Not Found")],
    ids=["broken", "chunked", "wrong", "missing"],
)
def test_single_bad_mirror_leaves_nothing(tmp_path, server, mode, reason):
    base, _ = server
    with pytest.raises(DownloadError, match=re.escape(f"{base}/{mode}/a.bin: ") + reason):
        download(tmp_path, {"a.bin": HASHES["a.bin"]}, [f"{base}/{mode}/"], timeout=TIMEOUT)
    _only_targets(tmp_path, [])


def test_all_mirrors_bad_lists_each_url(tmp_path, server):
    base, _ = server
    mirrors = [f"{base}/{mode}/" for mode in ("wrong", "broken", "missing", "chunked")]
    with pytest.raises(DownloadError) as info:
        download(tmp_path, HASHES, mirrors, timeout=TIMEOUT)
    msg = str(info.value)
    assert msg.startswith("could not download a.bin:")
    for mirror in mirrors:
        assert f"  {mirror}a.bin: " in msg
    assert "offline" not in msg  # the mirrors answered; they were just wrong
    assert f"copy the four MNIST files into {tmp_path} by hand" in msg
    _only_targets(tmp_path, [])


def test_failure_keeps_files_already_fetched(tmp_path, server):
    base, _ = server
    files = {"a.bin": HASHES["a.bin"], "b.bin": "0" * 64}
    with pytest.raises(DownloadError, match="could not download b.bin"):
        download(tmp_path, files, [base + "/good/"], timeout=TIMEOUT)
    _only_targets(tmp_path, ["a.bin"])


def test_unreachable_mirror(tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}/mnist/"
    with pytest.raises(DownloadError) as info:
        download(tmp_path, {"a.bin": HASHES["a.bin"]}, [url], timeout=TIMEOUT)
    msg = str(info.value)
    assert re.search(re.escape(url + "a.bin: ") + ".*Connection refused", msg)
    assert "no mirror could be reached: are you offline?" in msg
    _only_targets(tmp_path, [])


def test_unreachable_then_good_mirror(tmp_path, server, closed_port):
    base, _ = server
    download(tmp_path, {"a.bin": HASHES["a.bin"]}, [f"http://127.0.0.1:{closed_port}/", base + "/good/"],
             timeout=TIMEOUT)
    assert sha256(tmp_path / "a.bin") == HASHES["a.bin"]


def test_stalled_mirror_times_out(tmp_path, server):
    base, _ = server
    with pytest.raises(DownloadError, match=re.escape(f"{base}/stall/a.bin: ") + ".*timed out"):
        download(tmp_path, {"a.bin": HASHES["a.bin"]}, [base + "/stall/"], timeout=0.3)
    _only_targets(tmp_path, [])


def test_sha256_matches_hashlib(tmp_path):
    data = b"x" * (3 << 20) + b"tail"  # spans several read blocks
    (tmp_path / "f").write_bytes(data)
    assert sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_mnist_constants():
    assert sorted(MNIST_FILES) == sorted(
        f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))
    )
    assert all(re.fullmatch("[0-9a-f]{64}", h) for h in MNIST_FILES.values())
    assert all(m.startswith(("http://", "https://")) and m.endswith("/") for m in MNIST_MIRRORS)
