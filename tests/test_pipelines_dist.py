"""Real processes and sockets: a 2-process torch.distributed (gloo) run on loopback, shards over HTTP."""

from __future__ import annotations

import functools
import json
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_pipelines import indices, make_store, run

from datagen.store.sample import sample_key
from pipelines.dataset import VideoDataset
from pipelines.loader import make_loader
from pipelines.world import World

N_SAMPLES = 7 * 5 + 4  # 39: does not split evenly over 2 ranks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        ds = VideoDataset(store, seed=9)  # World comes from torch.distributed
        assert ds.world == World(rank, world_size)
        ds.set_epoch(1)
        loader = make_loader(ds, batch_size=4, num_workers=1, dtype=torch.uint8)
        keys, pixels, steps = [], [], 0
        for batch in loader:
            keys += batch["key"]
            pixels += indices(batch["video"])
            steps += 1
        counts = torch.tensor([steps, len(keys)])
        gathered = [torch.zeros_like(counts) for _ in range(world_size)]
        dist.all_gather(
            gathered, counts
        )  # would hang on unequal step counts in a DDP loop; here just compared
        result = {"keys": keys, "pixels": pixels, "all": [g.tolist() for g in gathered], "pad": ds.pad_count}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_two_process_gloo_run_equal_disjoint_complete(tmp_path):
    store = make_store(tmp_path / "store", last=4, formats=("wds",))
    # spawn: a forked child of this multi-threaded test process (DataLoader workers, torch threads) can hang
    mp.spawn(_rank_main, args=(2, free_port(), str(store), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["all"] == ranks[1]["all"] == [[5, 20], [5, 20]]  # equal steps and samples
    assert ranks[0]["pad"] == 1
    a, b = set(ranks[0]["keys"]), set(ranks[1]["keys"])
    assert a | b == {sample_key(i) for i in range(N_SAMPLES)}  # full coverage
    assert (
        len(a & b) <= 1 and len(ranks[0]["keys"]) + len(ranks[1]["keys"]) == N_SAMPLES + 1
    )  # one pad repeat
    for rank in ranks:
        assert [int(k) for k in rank["keys"]] == rank["pixels"]
    # the same split, computed in this process with explicit World values
    with pytest.warns(UserWarning, match="padding the epoch with 1 repeated"):
        datasets = [_epoch1(VideoDataset(store, seed=9, world=World(r, 2))) for r in range(2)]
    local = [run(make_loader(ds, 4, num_workers=0)) for ds in datasets]
    assert local == [ranks[0]["keys"], ranks[1]["keys"]]


def _epoch1(ds: VideoDataset) -> VideoDataset:
    ds.set_epoch(1)
    return ds


@pytest.fixture
def http_store(tmp_path):
    store = make_store(tmp_path / "web", n_shards=3, per_shard=4)
    handler = functools.partial(_QuietHandler, directory=str(store))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield store, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("fmt", ["wds", "hdf5"])
def test_http_manifest_and_url_pattern(http_store, fmt):
    store, base = http_store
    local = run(make_loader(VideoDataset(store, format=fmt, seed=3, world=World()), 5, 0))
    remote = VideoDataset(f"{base}/manifest.json", format=fmt, seed=3, world=World())
    assert run(make_loader(remote, 5, num_workers=2)) == local
    ext = ".tar" if fmt == "wds" else ".h5"
    pattern = VideoDataset(f"{base}/test-{{000000..000002}}{ext}", epoch_mode="resampled", world=World())
    batch = next(iter(make_loader(pattern, 6, num_workers=0, dtype=torch.uint8)))
    assert [int(k) for k in batch["key"]] == indices(batch["video"])
