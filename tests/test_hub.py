"""Models by name: Hugging Face Hub repos read from a local Hub cache (offline), pushing and reading back, the
official names downloaded from a loopback HTTP server (resume, corrupt files, offline), the cache commands and
the ImageNet class names. Nothing here reaches the network."""

import dataclasses
import hashlib
import http.server
import json
import shutil
import socket
import threading
import types
from pathlib import Path

import pytest
import torch

import maskgit
from maskgit.cli import main
from maskgit.errors import MaskGITError
from maskgit.storage import download, hub
from maskgit.storage.checkpoint import save_model

hf = pytest.importorskip("huggingface_hub")


def _message(fn, *args, **kw) -> str:
    with pytest.raises(MaskGITError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def _images(pipe):
    return pipe.generate([0, 1, 2], steps=2, seed=3, output="np")


# ---------------------------------------------------------------- a local Hub cache
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def put_snapshot(cache: Path, repo: str, src: Path, commit: str | None = None, ref: str | None = "main") -> Path:
    """``src`` as the snapshot ``commit`` of ``repo`` in huggingface_hub's cache layout (+ refs/<ref>)."""
    commit = commit or hashlib.sha1(f"{repo}{src}".encode()).hexdigest()
    storage = cache / f"models--{repo.replace('/', '--')}"
    folder = storage / "snapshots" / commit
    shutil.copytree(src, folder)
    if ref:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return folder


def test_hub_repo_loads_like_the_directory(tiny_pipeline_dir, hub_cache, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_pipeline_dir, src)
    (src / "README.md").write_text("# a card\n")
    (src / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    folder = put_snapshot(hub_cache, "owner/name", src)
    pipe = maskgit.load("owner/name")
    assert maskgit.load("owner/name").source == "owner/name" and pipe.class_names == ["a", "b", "c", "d"]
    assert (_images(pipe) == _images(maskgit.load(tiny_pipeline_dir))).all()
    assert maskgit.names.resolve("owner/name") == folder
    assert maskgit.names.resolve("owner/name@main") == folder


def test_revisions_and_commits(tiny_pipeline_dir, hub_cache, tmp_path):
    from conftest import tiny_models
    put_snapshot(hub_cache, "owner/name", tiny_pipeline_dir)
    tok, tr = tiny_models(seed=1)
    v1 = tmp_path / "v1"
    save_model(tok, v1 / "tokenizer")
    save_model(tr, v1 / "maskgit")
    commit = "1" * 40
    put_snapshot(hub_cache, "owner/name", v1, commit=commit, ref="v1")
    for name in ("owner/name@v1", f"owner/name@{commit}"):
        got = maskgit.load(name).transformer.state_dict()
        assert all(torch.equal(got[k], v) for k, v in tr.state_dict().items())
    assert "not in the Hub cache" in _message(maskgit.load, "owner/name@v2")
    assert "HF_HUB_OFFLINE=1" in _message(maskgit.load, "owner/other")


@pytest.mark.parametrize("extra, needle", [("maskgit/pytorch_model.bin", "pickle"), ("weights.pt", "pickle"),
                                           ("notes.txt", "unexpected notes.txt"),
                                           ("-maskgit/manifest.json", "no maskgit/manifest.json")])
def test_strict_layout_refuses_pickles_and_strangers(tiny_pipeline_dir, hub_cache, tmp_path, extra, needle):
    src = tmp_path / "src"
    shutil.copytree(tiny_pipeline_dir, src)
    if extra.startswith("-"):
        (src / extra[1:]).unlink()
    else:
        (src / extra).write_bytes(b"\x80\x04K\x01.")
    put_snapshot(hub_cache, "owner/bad", src)
    msg = _message(maskgit.load, "owner/bad")
    assert needle in msg and "owner/bad" in msg
    assert main(["sample", "--model", "owner/bad", "--out", str(tmp_path / "x.png")]) == 2


AMUSED_FILES = ["model_index.json", "README.md", "scheduler/scheduler_config.json", "vqvae/config.json",
                "vqvae/diffusion_pytorch_model.safetensors", "vqvae/diffusion_pytorch_model.fp16.safetensors",
                "vqvae/diffusion_pytorch_model.bin", "transformer/config.json",
                "transformer/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json",
                "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin", "tokenizer/vocab.json",
                "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "assets/cat.png"]


def test_amused_layout_fetches_only_what_it_needs(hub_cache, tmp_path):
    need = hub.allow_patterns(AMUSED_FILES, "amused/x")
    assert need == ["model_index.json", "scheduler/scheduler_config.json", "vqvae/config.json",
                    "vqvae/diffusion_pytorch_model.safetensors", "transformer/config.json",
                    "transformer/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json",
                    "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
                    "tokenizer/vocab.json"]
    no_weights = [f for f in AMUSED_FILES if not f.startswith("transformer/diffusion")]
    assert "transformer/config.json" in _message(hub.allow_patterns, no_weights, "amused/x")
    src = tmp_path / "amused"
    for f in need:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_text("{}")
    folder = put_snapshot(hub_cache, "amused/amused-tiny", src)
    assert maskgit.names.resolve("amused/amused-tiny") == folder  # Pipeline.load takes it from there
    (folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    assert "transformer/config.json" in _message(maskgit.names.resolve, "amused/amused-tiny")


def test_online_listing_then_snapshot_download_of_exactly_the_layout(tiny_pipeline_dir, hub_cache, tmp_path,
                                                                   monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    src = tmp_path / "src"
    shutil.copytree(tiny_pipeline_dir, src)
    (src / "README.md").write_text("card")
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    calls = []

    class RepositoryNotFoundError(Exception):
        pass

    class Api:
        def list_repo_files(self, repo, revision=None):
            if repo == "owner/missing":
                raise RepositoryNotFoundError("404")
            return [*files, ".gitattributes"]

    def snapshot_download(repo, revision=None, allow_patterns=None, cache_dir=None):
        calls.append((repo, revision, allow_patterns, cache_dir))
        return str(put_snapshot(Path(cache_dir), repo, src))

    monkeypatch.setattr(hf, "HfApi", Api)
    monkeypatch.setattr(hf, "snapshot_download", snapshot_download)
    pipe = maskgit.load("owner/name@main")
    assert calls == [("owner/name", "main", files, str(hub_cache))]  # never .gitattributes or anything else
    assert (_images(pipe) == _images(maskgit.load(tiny_pipeline_dir))).all()
    assert "has no such repo" in _message(maskgit.load, "owner/missing")


# ---------------------------------------------------------------- save_pretrained / push_to_hub
def test_push_to_hub_then_load_reads_back_what_was_pushed(hub_cache, tmp_path, monkeypatch, capsys):
    from conftest import tiny_models
    tok, tr = tiny_models(seed=2)
    src = tmp_path / "model"
    save_model(tok, src / "tokenizer", meta={"command": "maskgit train-tokenizer --preset tiny"})
    save_model(tr, src / "maskgit", meta={"command": "maskgit train --preset tiny --max-steps 9",
                                          "final_metrics": {"step": 9, "val_loss": 1.23456},
                                          "class_names": ["a", "b", "c", "d"], "tokenizer": "/tmp/somewhere"})
    pushed = []

    class Api:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo, token=None, private=False, exist_ok=False):
            pushed.append(("create", repo, private))

        def upload_folder(self, *, repo_id, folder_path, token=None, commit_message=None, delete_patterns=None):
            commit = hashlib.sha1(f"{repo_id}{len(pushed)}".encode()).hexdigest()
            put_snapshot(hub_cache, repo_id, Path(folder_path), commit=commit)
            pushed.append(("upload", repo_id, commit_message, delete_patterns))
            return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{commit}")

    monkeypatch.setattr(hf, "HfApi", Api)
    pipe = maskgit.load(src)
    url = pipe.push_to_hub("me/tiny", private=True)
    assert url.startswith("https://huggingface.co/me/tiny/commit/") and pushed[0] == ("create", "me/tiny", True)
    back = maskgit.load("me/tiny")
    assert (_images(back) == _images(pipe)).all() and back.class_names == ["a", "b", "c", "d"]
    assert "tokenizer" not in back.transformer.meta  # no local path travels
    card = (hub.cached_snapshot(hub_cache, "me/tiny", None) / "README.md").read_text()
    for needle in ("maskgit sample --model me/tiny --labels 0", "maskgit train --preset tiny --max-steps 9",
                   "val_loss 1.235", "4 classes", "library_name: maskgit"):
        assert needle in card, needle
    assert main(["push", "--model", str(src), "--repo", "me/cli"]) == 0
    assert "me/cli" in capsys.readouterr().out
    assert (_images(maskgit.load("me/cli")) == _images(pipe)).all()
    assert "not a Hugging Face Hub repo id" in _message(pipe.push_to_hub, "me/tiny@v1")
    # save_pretrained alone: the same layout, loadable, and it never replaces a folder that is not a pipeline
    out = pipe.save_pretrained(tmp_path / "saved")
    assert (_images(maskgit.load(out)) == _images(pipe)).all() and (out / "README.md").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert "not a pipeline folder" in _message(pipe.save_pretrained, tmp_path / "other")
    assert "fp32" in _message(maskgit.load(src, precision="int8").save_pretrained, tmp_path / "q")


# ---------------------------------------------------------------- the official names, from a loopback server
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        srv = self.server
        rng = self.headers.get("Range")
        srv.seen.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.cuts.get(self.path, 0)
        if cut:  # close the connection after `cut` bytes, once
            srv.cuts[self.path] = 0
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


TINY = "google/maskgit-tiny"


@pytest.fixture
def official(tmp_path, monkeypatch):
    """A loopback server holding tiny official-format files, and the table entry that names them."""
    from test_convert import TR, random_tree

    from maskgit.config import VQGANConfig
    from maskgit.storage.flax import write_flax_msgpack
    tok_cfg = VQGANConfig(channels=3, filters=32, channel_mult=(1, 2), embedding_dim=8, codebook_size=16,
                          image_size=8)
    write_flax_msgpack(random_tree(tok_cfg, seed=4), tmp_path / "tok")
    write_flax_msgpack(random_tree(TR, seed=5), tmp_path / "tr")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files = {"/ckpt/tokenizer_tiny_checkpoint": (tmp_path / "tok").read_bytes(),
                 "/ckpt/maskgit_tiny_checkpoint": (tmp_path / "tr").read_bytes()}
    srv.seen, srv.cuts = [], {}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for var in ("MASKGIT_OFFLINE", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("MASKGIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MASKGIT_OFFICIAL_URL", f"http://127.0.0.1:{srv.server_address[1]}/ckpt")  # "/" appended
    monkeypatch.setitem(download.OFFICIAL_MODELS, TINY, download.OfficialModel(
        "tokenizer_tiny_checkpoint", "maskgit_tiny_checkpoint", {"class_names": ["x", "y", "z"]}))
    yield srv
    srv.shutdown()
    srv.server_close()


def _cache_files(home: Path) -> list[str]:
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file())


def test_official_name_downloads_converts_once_and_keeps_only_the_pipeline(official, tmp_path, capsys):
    stale = tmp_path / "home" / "models" / ".google--maskgit-tiny.tmp1.abcd"  # as a killed conversion leaves it
    stale.mkdir(parents=True)
    pipe = maskgit.load(TINY)
    assert not stale.exists()
    assert pipe.class_names == ["x", "y", "z"] and pipe.transformer.meta["dataset"] == "imagenet"
    home = tmp_path / "home"
    model = home / "models" / "google--maskgit-tiny"
    files = _cache_files(home)
    assert not [f for f in files if f.startswith("downloads/") and not f.endswith(".lock")], files
    assert {"models/google--maskgit-tiny/source.json", "models/google--maskgit-tiny/maskgit/manifest.json",
            "models/google--maskgit-tiny/tokenizer/manifest.json"} <= set(files)
    source = json.loads((model / "source.json").read_text())
    for entry in source["files"]:
        data = official.files["/ckpt/" + entry["name"]]
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    requests = len(official.seen)
    assert requests == 2 and "downloading" in capsys.readouterr().err
    out = tmp_path / "s.png"
    assert main(["sample", "--model", TINY, "--labels", "y,2", "--steps", "2", "--out", str(out)]) == 0
    from PIL import Image
    assert json.loads(Image.open(out).text["maskgit"])["labels"] == [1, 2]
    assert len(official.seen) == requests  # from the cache: no request
    assert (_images(maskgit.load(model)) == _images(pipe)).all()
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert TINY in listing and str(model) in listing
    assert main(["cache", "rm", TINY]) == 0 and not model.exists()
    assert main(["cache", "rm", TINY]) == 2 and "not in the cache" in capsys.readouterr().err


def test_an_interrupted_transfer_resumes_with_a_range_request(official, tmp_path, monkeypatch):
    official.cuts["/ckpt/maskgit_tiny_checkpoint"] = 1000
    maskgit.load(TINY)  # the second transfer of the same call continues the .part
    assert ("/ckpt/maskgit_tiny_checkpoint", "bytes=1000-") in official.seen
    source = json.loads((tmp_path / "home" / "models" / "google--maskgit-tiny" / "source.json").read_text())
    want = hashlib.sha256(official.files["/ckpt/maskgit_tiny_checkpoint"]).hexdigest()
    assert [f["sha256"] for f in source["files"] if f["name"] == "maskgit_tiny_checkpoint"] == [want]
    # across calls: one transfer per call; the .part stays, the next call continues it
    assert main(["cache", "rm", TINY]) == 0
    monkeypatch.setattr(download, "RETRIES", 1)
    official.cuts["/ckpt/tokenizer_tiny_checkpoint"] = 500
    official.seen.clear()
    assert "run the same command again to resume" in _message(maskgit.load, TINY)
    part = tmp_path / "home" / "downloads" / "tokenizer_tiny_checkpoint.part"
    assert part.stat().st_size == 500 and not (tmp_path / "home" / "models" / "google--maskgit-tiny").exists()
    assert maskgit.load(TINY).class_names == ["x", "y", "z"]
    assert official.seen[1] == ("/ckpt/tokenizer_tiny_checkpoint", "bytes=500-") and not part.exists()


def test_a_corrupt_download_is_refused_and_removed(official, tmp_path):
    official.files["/ckpt/maskgit_tiny_checkpoint"] = b"<html><body>Not found</body></html>"
    msg = _message(maskgit.load, TINY)
    assert "maskgit_tiny_checkpoint" in msg and "HTML" in msg and "removed" in msg
    left = _cache_files(tmp_path / "home")
    assert not [f for f in left if "maskgit_tiny" in f or f.startswith("models/")], left
    assert not list((tmp_path / "home").rglob(".*"))  # no temporary folders
    official.files["/ckpt/maskgit_tiny_checkpoint"] = b"\x81\xa6params\xc0"  # msgpack, not a checkpoint
    assert "removed" in _message(maskgit.load, TINY)
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())


def test_offline_with_nothing_cached_says_what_to_download(official, tmp_path, monkeypatch):
    for var in ("MASKGIT_OFFLINE", "HF_HUB_OFFLINE"):
        with monkeypatch.context() as m:
            m.setenv(var, "1")
            msg = _message(maskgit.load, TINY)
            assert f"{var}=1" in msg and "tokenizer_tiny_checkpoint and maskgit_tiny_checkpoint" in msg
            assert str(tmp_path / "home" / "downloads") in msg and "maskgit convert official" in msg
    assert official.seen == []
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASKGIT_OFFICIAL_URL", f"http://127.0.0.1:{port}/x/")
    msg = _message(maskgit.load, TINY)
    assert "cannot reach" in msg and f"http://127.0.0.1:{port}/x/" in msg and "maskgit convert official" in msg
    assert "tokenizer_tiny_checkpoint and maskgit_tiny_checkpoint" in msg
    assert not [f for f in _cache_files(tmp_path / "home") if not f.endswith(".lock")]
    # the files put where the message says: converted without any connection
    monkeypatch.setenv("MASKGIT_OFFLINE", "1")
    for path, data in official.files.items():
        (tmp_path / "home" / "downloads" / path.rsplit("/", 1)[1]).write_bytes(data)
    assert maskgit.load(TINY).class_names == ["x", "y", "z"]


def test_unknown_names_list_what_was_tried(hub_cache, capsys, tmp_path):
    msg = _message(maskgit.load, "no-such-model")
    for needle in ("no model 'no-such-model'", "local directory", "fashion-mnist", "google/maskgit-imagenet256",
                   "owner/name[@revision]"):
        assert needle in msg, needle
    assert "not in the Hub cache" in _message(maskgit.load, "runs/final")  # a repo id by its form
    assert main(["cache", "list"]) == 0 and "nothing cached" in capsys.readouterr().out
    assert hub.parse_repo_id("a/b@v1.0") == ("a/b", "v1.0") and hub.parse_repo_id("a/b") == ("a/b", None)
    for bad in ("a", "a/b/c", "./a/b", "/a/b", "a--x/b", "a/b.", "a/b@"):
        assert hub.parse_repo_id(bad) is None, bad


# ---------------------------------------------------------------- ImageNet class names
def test_imagenet_class_names_and_labels_by_name(tmp_path):
    from test_convert import TR, random_tree

    from maskgit.commands.common import parse_labels
    from maskgit.config import VQGANConfig
    from maskgit.storage.official import convert_official, imagenet_class_names
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) >= 997
    for i, n in {0: "tench", 1: "goldfish", 207: "golden retriever", 281: "tabby", 340: "zebra",
                 817: "sports car", 999: "toilet tissue"}.items():
        assert names[i] == n
    assert parse_labels("golden retriever, 3,Golden_Retriever", names) == [207, 3, 207]
    assert parse_labels("Cardigan,cardigan", names) == [264, 474]
    assert "134, 517" in _message(parse_labels, "crane", names)
    assert "integers" in _message(parse_labels, "golden", names)
    # a converted 1,000-class release carries them
    from maskgit.storage.flax import write_flax_msgpack
    tok_cfg = VQGANConfig(channels=3, filters=32, channel_mult=(1, 2), embedding_dim=8, codebook_size=16,
                          image_size=8)
    tr_cfg = dataclasses.replace(TR, num_classes=1000)
    write_flax_msgpack(random_tree(tok_cfg), tmp_path / "tok")
    write_flax_msgpack(random_tree(tr_cfg), tmp_path / "tr")
    convert_official(tmp_path / "tok", tmp_path / "tr", tmp_path / "out", log=lambda m: None)
    pipe = maskgit.load(tmp_path / "out")
    assert pipe.class_names == names
    assert main(["sample", "--model", str(tmp_path / "out"), "--labels", "golden retriever", "--steps", "1",
                 "--out", str(tmp_path / "g.png")]) == 0


def test_sample_without_labels_on_a_thousand_class_model_asks_for_labels():
    """8 samples of every class is the default for small class sets; for ImageNet's 1,000 it would be 8,000
    images, so the command asks for --labels instead."""
    from types import SimpleNamespace

    from maskgit.commands.sample import _labels
    from maskgit.errors import MaskGITError
    from maskgit.storage.official import imagenet_class_names
    pipe = SimpleNamespace(transformer=SimpleNamespace(config=SimpleNamespace(num_classes=1000)),
                           class_names=imagenet_class_names())
    with pytest.raises(MaskGITError, match='give --labels .*"golden retriever"'):
        _labels(SimpleNamespace(labels=None, num=None), pipe)
    small = SimpleNamespace(transformer=SimpleNamespace(config=SimpleNamespace(num_classes=4)), class_names=None)
    assert _labels(SimpleNamespace(labels=None, num=None), small) == [i for i in range(4) for _ in range(8)]
