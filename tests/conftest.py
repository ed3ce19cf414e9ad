"""Shared test set-up: a deterministic hypothesis profile, and where the real data samples live."""

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# No per-example deadline (the CI machine has 2 shared cores) and a fixed seed so CI is reproducible.
settings.register_profile("dmpose", deadline=None, derandomize=True)
settings.load_profile("dmpose")

SHARED_DATA = Path(os.environ.get("DMPOSE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _sample(name: str, annotation: str) -> Path:
    path = SHARED_DATA / name
    if not (path / annotation).is_file():
        pytest.skip(f"real sample {name} not found at {path} (set DMPOSE_SHARED_DATA)")
    return path


@pytest.fixture
def coco_sample() -> Path:
    return _sample("coco_sample", "test_coco.json")


@pytest.fixture
def mpii_sample() -> Path:
    return _sample("mpii_sample", "test_mpii.json")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A freshly initialised hrnet_tiny (COCO-17) at a 64x48 input, DM decode (the predict tests' model)."""
    import dmpose

    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny", num_joints=17)
    return dmpose.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors",
                                  meta={"input_size": [64, 48], "decode": "2x2"})


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test reaches the internet: published weights are fetched from a loopback port nothing listens on
    (the tests that serve files set their own mirror or URLs)."""
    monkeypatch.setenv("DMPOSE_WEIGHTS_MIRROR", "http://127.0.0.1:9/")


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: set[str] = set()

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        name = self.path.lstrip("/")
        if name in self.truncate:  # announce the whole file, send half, hang up
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server (127.0.0.1) serving tmp_path/served: (folder, base URL, handler class; add a file
    name to `handler.truncate` to have it announced whole and cut off half-way)."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(_Handler):
        truncate: set[str] = set()

        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", Handler
    httpd.shutdown()
    httpd.server_close()


def publish(root: Path, stem: str, obj) -> str:
    """Save `obj` (or copy the file `obj` names) into `root` as OpenMMLab publishes: the file named by its sha256
    prefix and a date. Returns the file name."""
    tmp = root / f"{stem}.tmp"
    if isinstance(obj, Path):
        tmp.write_bytes(obj.read_bytes())
    else:
        torch.save(obj, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"{stem}-{digest[:8]}_20200708.pth"
    tmp.rename(root / name)
    return name
