"""CIFAR-100 data pipeline: fixture layout, DataModule, batch augmentation, errors, real records."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import socket
import tarfile
import urllib.error
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures import dump_py2_pickle, write_cifar100_fixture
from fixtures.cifar import FINE_LABEL_NAMES
from torchvision.datasets import CIFAR100 as TVCIFAR100

from crnn.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    ChecksumMismatchError,
    ChecksumMismatchWarning,
    CIFAR100DataModule,
    CorruptDatasetError,
    DatasetNotFoundError,
    EpochBatchSampler,
    EpochShuffleSampler,
    crop_flip,
    random_crop_flip,
)
from crnn.data import cifar100_files as files_mod

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared/data/cifar100_partial"
needs_shared = pytest.mark.skipif(
    not (SHARED_CIFAR / "cifar-100-python").is_dir(), reason="../shared/data/cifar100_partial absent"
)
# Fixture files never match the official md5s; tests that care about the warning capture it.
pytestmark = pytest.mark.filterwarnings("ignore::crnn.data.errors.ChecksumMismatchWarning")

N_TRAIN, N_TEST = 200, 100


@pytest.fixture(scope="module")
def cifar_fixture_ro(tmp_path_factory) -> Path:
    """Read-only tiny CIFAR-100 (200 train, 100 test) shared by this module's tests."""
    return write_cifar100_fixture(tmp_path_factory.mktemp("cifar_ro"), n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture
def cifar_fixture_rw(tmp_path) -> Path:
    """A fresh tiny CIFAR-100 that the test may damage."""
    return write_cifar100_fixture(tmp_path / "data", n_train=64, n_test=32)


def make_dm(root, **kw) -> CIFAR100DataModule:
    kw.setdefault("verify_checksums", False)
    kw.setdefault("download", False)
    return CIFAR100DataModule(root=root, **kw)


def normalised(x_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255 - mean) / std


# ------------------------------------------------------------------------------------- fixture
def test_fixture_loads_with_torchvision_loader(cifar_fixture_ro):
    class Unchecked(TVCIFAR100):  # torchvision's own loader, md5 checks off (None = existence only)
        train_list = [["train", None]]
        test_list = [["test", None]]
        meta = {**TVCIFAR100.meta, "md5": None}

    dm = make_dm(cifar_fixture_ro, val_size=0)
    dm.setup()
    for train, ours in ((True, dm.train_set), (False, dm.test_set)):
        tv = Unchecked(str(cifar_fixture_ro), train=train, download=False)
        assert len(tv) == len(ours) == (N_TRAIN if train else N_TEST)
        assert np.array_equal(tv.data, ours.images.permute(0, 2, 3, 1).numpy())  # torchvision: HWC
        assert tv.targets == ours.labels.tolist()
        assert tv.classes == dm.class_names == FINE_LABEL_NAMES
        img, target = tv[3]
        assert img.size == (32, 32) and target == int(ours.labels[3])


def test_fixture_uses_python2_pickle_layout(cifar_fixture_ro):
    folder = cifar_fixture_ro / "cifar-100-python"
    for name in ("train", "test", "meta"):
        raw = (folder / name).read_bytes()
        ops = {op.name for op, _, _ in pickletools.genops(raw)}
        assert raw[:2] == b"\x80\x02"
        assert "SHORT_BINSTRING" in ops and not ops & {"BINUNICODE", "SHORT_BINUNICODE"}, name
    train_raw = (folder / "train").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in train_raw
    entry = pickle.loads(train_raw, encoding="latin1")
    assert list(entry) == ["filenames", "batch_label", "fine_labels", "coarse_labels", "data"]
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (N_TRAIN, 3072)
    assert sorted(set(entry["fine_labels"])) == list(range(100))
    meta = pickle.loads((folder / "meta").read_bytes(), encoding="latin1")
    assert len(meta["fine_label_names"]) == 100 and len(meta["coarse_label_names"]) == 20


@needs_shared
def test_fixture_writer_reproduces_official_files_byte_for_byte():
    for name in ("train", "test", "meta"):
        raw = (SHARED_CIFAR / "cifar-100-python" / name).read_bytes()
        buf = io.BytesIO()
        dump_py2_pickle(pickle.loads(raw, encoding="latin1"), buf, memo_start=1 if name == "meta" else None)
        assert buf.getvalue() == raw, name


# ------------------------------------------------------------------------------------- setup
def test_constructor_checks_config_without_touching_disk(tmp_path):
    root = tmp_path / "nowhere"
    dm = CIFAR100DataModule(root=root, download=True)  # valid: no I/O at all
    assert not root.exists()
    assert dm.num_classes == 100 and dm.input_shape == (3, 32, 32) and dm.class_names is None
    with pytest.raises(ValueError) as err:
        CIFAR100DataModule(
            root=root, batch_size=0, val_size=1.5, std=[0.2, 0.0, 0.2], input_shape=[3, 64, 64]
        )
    msg = str(err.value)
    for key in ("data.batch_size", "data.val_size", "data.std", "data.input_shape"):
        assert key in msg
    assert not root.exists()
    with pytest.raises(ValueError, match="data.num_classes"):
        CIFAR100DataModule(root=root, num_classes=10)
    with pytest.raises(ValueError, match="data.val_size"):
        CIFAR100DataModule(root=root, val_size=True)


@pytest.mark.parametrize(("val_size", "n_val"), [(50, 50), (0.25, 50), (0, 0)])
def test_setup_sizes(cifar_fixture_ro, val_size, n_val):
    dm = make_dm(cifar_fixture_ro, val_size=val_size)
    dm.setup("fit")
    assert len(dm.train_set) == N_TRAIN - n_val and len(dm.val_set) == n_val
    assert len(dm.test_set) == N_TEST  # fit checks and reads the test file too
    assert dm.class_names == FINE_LABEL_NAMES
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.images.shape[1:] == (3, 32, 32)
    assert dm.train_set.labels.dtype == torch.int64
    if n_val == 0:
        assert dm.val_dataloader() == []


def test_val_size_larger_than_train_fails_naming_the_key(cifar_fixture_ro):
    with pytest.raises(ValueError, match=r"data.val_size=200 .* 200 records"):
        make_dm(cifar_fixture_ro, val_size=200).setup("fit")


def test_split_is_deterministic_disjoint_and_seeded(cifar_fixture_ro):
    def split(seed):
        dm = make_dm(cifar_fixture_ro, val_size=40, split_seed=seed)
        dm.setup("fit")
        return dm

    a, b, c = split(0), split(0), split(1)
    assert torch.equal(a.val_indices, b.val_indices) and torch.equal(a.train_set.images, b.train_set.images)
    assert not torch.equal(a.val_indices, c.val_indices)
    both = torch.cat([a.train_indices, a.val_indices]).sort().values
    assert torch.equal(both, torch.arange(N_TRAIN))
    # The split sets hold exactly the records at those indices of the train file.
    full = make_dm(cifar_fixture_ro, val_size=0)
    full.setup("fit")
    assert torch.equal(a.val_set.images, full.train_set.images[a.val_indices])
    assert torch.equal(a.val_set.labels, full.train_set.labels[a.val_indices])


def test_loaders_yield_uint8_batches_with_seeded_epoch_shuffles(cifar_fixture_ro):
    dm = make_dm(cifar_fixture_ro, val_size=50, batch_size=32, shuffle_seed=7)
    dm.setup()
    train = dm.train_dataloader()
    assert len(train) == 150 // 32  # drop_last: 4 full batches
    x, y, seed = next(iter(train))
    assert (
        x.dtype == torch.uint8 and x.shape == (32, 3, 32, 32) and y.dtype == torch.int64 and y.shape == (32,)
    )
    assert isinstance(seed, int)

    def epoch_labels(loader, epoch):
        loader.set_epoch(epoch)
        return torch.cat([y for _, y, _ in loader])

    e0, e1 = epoch_labels(train, 0), epoch_labels(train, 1)
    assert not torch.equal(e0, e1)  # a new order each epoch
    again = make_dm(cifar_fixture_ro, val_size=50, batch_size=32, shuffle_seed=7)
    again.setup("fit")
    assert torch.equal(epoch_labels(again.train_dataloader(), 1), e1)  # same (seed, epoch), same order
    perm = EpochShuffleSampler(150, seed=7).permutation(1)[: len(e1)]
    assert torch.equal(e1, dm.train_set.labels[perm])
    # Evaluation loaders: every record once, in order, the last batch kept.
    val = dm.val_dataloader()
    assert torch.equal(torch.cat([y for _, y in val]), dm.val_set.labels)
    assert [len(y) for _, y in dm.test_dataloader()] == [32, 32, 32, 4]


def test_sampler_orders_depend_on_seed_and_epoch_and_seed_comes_from_torch(cifar_fixture_ro):
    s = EpochShuffleSampler(50, seed=3)
    first = list(s)
    s.set_epoch(1)
    assert sorted(first) == list(range(50)) and list(s) != first
    assert list(EpochShuffleSampler(50, seed=3)) == first
    assert list(EpochShuffleSampler(50, seed=4)) != first
    dm = make_dm(cifar_fixture_ro, val_size=50, batch_size=32)  # shuffle_seed=None
    dm.setup("fit")
    L.seed_everything(123, verbose=False)
    assert dm.train_dataloader().batch_sampler.sampler.seed == 123
    # A batch smaller than batch_size still trains (no full batch -> nothing dropped).
    small = make_dm(cifar_fixture_ro, val_size=0.9, batch_size=64)
    small.setup("fit")
    assert [len(y) for _, y, _ in small.train_dataloader()] == [20]


def test_sampler_shards_each_epoch_across_processes():
    """DDP: process r of w takes every w-th index of the epoch's order (padded to equal lengths), so
    the shards cover the order once; batch seeds differ between processes."""
    full = EpochShuffleSampler(10, seed=3).permutation(4)
    shards = [EpochShuffleSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(4)
    assert [len(s) for s in shards] == [4, 4, 4]
    merged = torch.stack([torch.tensor(list(s)) for s in shards], 1).reshape(-1)
    assert torch.equal(merged[:10], full) and torch.equal(merged[10:], full[:2])
    seeds = {EpochBatchSampler(s, 2, drop_last=False, seeded=True).batch(4, 0).seed for s in shards}
    assert len(seeds) == 3


# ------------------------------------------------------------------------------------- augmentation
def test_crop_flip_equals_per_sample_slicing():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    oy = torch.tensor([0, 8, 3, 4, 8, 1])
    ox = torch.tensor([8, 0, 5, 4, 8, 2])
    flip = torch.tensor([False, True, True, False, False, True])
    out = crop_flip(x, oy, ox, flip, padding=4)
    padded = F.pad(x, (4, 4, 4, 4))
    for b in range(6):
        ref = padded[b, :, oy[b] : oy[b] + 32, ox[b] : ox[b] + 32]
        assert torch.equal(out[b], ref.flip(-1) if flip[b] else ref), b
    assert torch.equal(crop_flip(x, torch.full((6,), 4), torch.full((6,), 4), None, padding=4), x)


def test_random_crop_flip_is_per_sample_seeded_and_keeps_dtype():
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(256, 3, 32, 32).contiguous()
    torch.manual_seed(0)
    a = random_crop_flip(x, padding=4)
    torch.manual_seed(0)
    b = random_crop_flip(x, padding=4)
    torch.manual_seed(1)
    c = random_crop_flip(x, padding=4)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Identify each sample's crop and flip among the 9 x 9 x 2 possibilities.
    one = x[:1]
    params = {
        crop_flip(one, torch.tensor([oy]), torch.tensor([ox]), torch.tensor([f]))[0].numpy().tobytes(): (
            oy,
            ox,
            f,
        )
        for oy in range(9)
        for ox in range(9)
        for f in (False, True)
    }
    drawn = [params[sample.numpy().tobytes()] for sample in a]
    assert len(set(drawn)) > 100  # samples get their own crop and flip
    assert {oy for oy, _, _ in drawn} == set(range(9)) and {ox for _, ox, _ in drawn} == set(range(9))
    assert 96 <= sum(f for _, _, f in drawn) <= 160  # about half are mirrored
    # Values come from the image or the black padding only.
    assert set(a.unique().tolist()) <= set(x.unique().tolist()) | {0}
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_crop_flip(x, generator=g1), random_crop_flip(x, generator=g2))


def test_transform_batch_train_augments_eval_only_normalises():
    dm = CIFAR100DataModule(root="unused")
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    ev = dm.transform_batch(x)
    assert ev.dtype == torch.float32 and ev.shape == x.shape
    torch.testing.assert_close(ev, normalised(x), rtol=0, atol=1e-5)
    tr = dm.transform_batch(x, seed=0)
    assert tr.dtype == torch.float32 and tr.shape == x.shape
    assert not torch.allclose(tr, ev)
    lo = (0 - torch.tensor(CIFAR100_MEAN)) / torch.tensor(CIFAR100_STD)
    hi = (1 - torch.tensor(CIFAR100_MEAN)) / torch.tensor(CIFAR100_STD)
    per_channel = tr.transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()
    with pytest.raises(TypeError, match="uint8"):
        dm.transform_batch(x.float())
    off = CIFAR100DataModule(root="unused", random_crop=False, horizontal_flip=False, normalize=False)
    assert torch.equal(off.transform_batch(x, seed=0), x.float() / 255)
    assert torch.equal(dm.transform_batch(x, seed=5), dm.transform_batch(x, seed=5))
    assert not torch.equal(dm.transform_batch(x, seed=5), dm.transform_batch(x, seed=6))


def test_hook_augments_only_batches_that_carry_a_seed():
    dm = CIFAR100DataModule(root="unused")
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(32)
    plain = normalised(x)
    out, labels = dm.on_after_batch_transfer((x, y), 0)  # evaluation batch
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-5)
    assert labels is y
    out, labels = dm.on_after_batch_transfer((x, y, 1234), 0)  # training batch
    assert not torch.allclose(out, plain) and labels is y
    torch.testing.assert_close(out, dm.transform_batch(x, seed=1234), rtol=0, atol=0)


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 100)
        self.seen = {"train": [], "val": [], "test": []}

    def _step(self, batch, stage):
        x, y = batch
        self.seen[stage].append((x.detach().clone(), y.clone()))
        return F.cross_entropy(self.fc(x.flatten(1)), y)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_run_augments_train_only_and_is_reproducible(cifar_fixture_ro):
    def run():
        L.seed_everything(0, verbose=False)
        dm = make_dm(cifar_fixture_ro, val_size=50, batch_size=32)
        model = _Recorder()
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=2, limit_train_batches=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
        return dm, model.seen

    dm, seen = run()
    _, seen2 = run()
    assert len(seen["train"]) == 4 and len(seen["val"]) == 2 * 2 and len(seen["test"]) == 4
    for stage in seen:
        for (x, y), (x2, y2) in zip(seen[stage], seen2[stage], strict=True):
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
            assert torch.equal(x, x2) and torch.equal(y, y2), stage  # same seed, same batches
    # Training batches: the sampler's order for epochs 0 and 1 (seed 0), augmented.
    sampler = EpochShuffleSampler(len(dm.train_set), seed=0)
    for epoch in (0, 1):
        idx = sampler.permutation(epoch)[:32]
        x, y = seen["train"][2 * epoch]
        assert torch.equal(y, dm.train_set.labels[idx])
        raw = normalised(dm.train_set.images[idx])
        changed = [not torch.allclose(x[i], raw[i], atol=1e-5) for i in range(32)]
        assert sum(changed) >= 24  # a sample is unchanged only for the centre crop, unflipped (1/162)
    assert not torch.equal(seen["train"][0][1], seen["train"][2][1])  # epochs differ
    # Validation and test: normalised only, in file order.
    x, y = seen["val"][0]
    torch.testing.assert_close(x, normalised(dm.val_set.images[:32]), rtol=0, atol=1e-5)
    x, y = seen["test"][0]
    torch.testing.assert_close(x, normalised(dm.test_set.images[:32]), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------- missing data
def _assert_names_folder_and_files(msg: str, root: Path):
    assert str(root / "cifar-100-python") in msg
    for name in ("'train'", "'test'", "'meta'"):
        assert name in msg
    assert "cifar-100-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/" in msg


def test_missing_folder_with_download_off(tmp_path):
    root = tmp_path / "data"
    dm = make_dm(root, download=False)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    _assert_names_folder_and_files(str(err.value), root)
    assert "data.download=false" in str(err.value)
    with pytest.raises(DatasetNotFoundError):  # setup without prepare_data says the same
        dm.setup("fit")
    assert isinstance(err.value, FileNotFoundError)


def test_missing_folder_offline_download_fails_fast_and_cleanly(tmp_path, monkeypatch):
    calls = []

    def offline(url, download_root, filename=None, md5=None, **kw):
        calls.append((url, socket.getdefaulttimeout()))
        Path(download_root, filename).write_bytes(b"partial")  # a partial tarball must not survive
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(files_mod._tv_utils, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    dm = make_dm(root, download=True, download_timeout=3.0)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    _assert_names_folder_and_files(msg, root)
    assert "URLError" in msg and "offline" in msg
    assert calls == [(files_mod.CIFAR100_URL, 3.0)]  # short socket timeout during the attempt
    assert socket.getdefaulttimeout() is None  # and restored after
    assert not root.exists()  # no tarball, no temporary folder, no empty root left behind


def test_download_installs_files_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    def fake_download(url, download_root, filename=None, md5=None, **kw):
        assert md5 == files_mod.CIFAR100_TGZ_MD5
        Path(download_root, filename).write_bytes(b"tarball")
        write_cifar100_fixture(download_root, n_train=20, n_test=10)  # what extraction produces

    monkeypatch.setattr(files_mod._tv_utils, "download_and_extract_archive", fake_download)
    root = tmp_path / "data"
    make_dm(root, download=True).prepare_data()
    assert sorted(os.listdir(root)) == ["cifar-100-python"]
    assert sorted(os.listdir(root / "cifar-100-python")) == ["meta", "test", "train"]
    dm = make_dm(root)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 20 and len(dm.test_set) == 10


def test_tarball_placed_in_root_is_extracted(tmp_path, cifar_fixture_rw):
    root = tmp_path / "hand"
    root.mkdir()
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(cifar_fixture_rw / "cifar-100-python", arcname="cifar-100-python")
    with pytest.raises(ChecksumMismatchError, match="cifar-100-python.tar.gz"):
        make_dm(root, verify_checksums=True).prepare_data()  # not the official tarball
    with pytest.warns(ChecksumMismatchWarning, match="cifar-100-python.tar.gz"):
        make_dm(root, verify_checksums=False).prepare_data()
    assert sorted(os.listdir(root / "cifar-100-python")) == ["meta", "test", "train"]
    assert not [p for p in os.listdir(root) if p.startswith(".cifar")]


# ------------------------------------------------------------------------------------- checksums
def test_checksum_mismatch_raises_by_default(cifar_fixture_rw):
    dm = CIFAR100DataModule(root=cifar_fixture_rw, download=False)  # verify_checksums=True
    with pytest.raises(ChecksumMismatchError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(cifar_fixture_rw / "cifar-100-python") in msg and "data.verify_checksums=false" in msg
    assert isinstance(err.value, CorruptDatasetError)


def test_checksum_mismatch_warns_when_verification_off(cifar_fixture_rw):
    with pytest.warns(ChecksumMismatchWarning, match=r"cifar-100-python/train.*verify_checksums=false"):
        make_dm(cifar_fixture_rw, verify_checksums=False).setup("fit")


def test_matching_checksums_pass_silently(cifar_fixture_rw, monkeypatch):
    folder = cifar_fixture_rw / "cifar-100-python"
    md5s = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in ("train", "test", "meta")}
    monkeypatch.setattr(files_mod, "CIFAR100_FILES", md5s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = CIFAR100DataModule(root=cifar_fixture_rw, download=False, val_size=0)
        dm.setup()
    assert len(dm.train_set) == 64


# ------------------------------------------------------------------------------------- corrupt files
def _rewrite(path: Path, obj):
    with open(path, "wb") as f:
        dump_py2_pickle(obj, f)


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("train", lambda p: p.write_bytes(p.read_bytes()[:5000]), "not a readable CIFAR-100 pickle"),
        ("test", lambda p: p.write_bytes(b"not a pickle at all"), "not a readable CIFAR-100 pickle"),
        ("train", lambda p: _rewrite(p, {"data": np.zeros((2, 3072), np.uint8), "coarse_labels": [0, 1]}),
         "lacks key 'fine_labels'"),
        ("test", lambda p: _rewrite(p, {"fine_labels": [0, 1]}), "lacks key 'data'"),
        ("meta", lambda p: _rewrite(p, {"coarse_label_names": ["a"]}), "lacks key 'fine_label_names'"),
        ("train", lambda p: _rewrite(p, {"data": np.zeros((2, 1024), np.uint8), "fine_labels": [0, 1]}),
         r"\(N, 3072\)"),
        ("train", lambda p: _rewrite(p, {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0]}),
         "'fine_labels' for 2 images"),
        ("test", lambda p: _rewrite(p, {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}),
         "outside"),
        ("meta", lambda p: _rewrite(p, {"fine_label_names": ["a", "b"]}), "2 fine_label_names"),
        ("train", lambda p: p.write_bytes(pickle.dumps(os.system)), "not allowed"),
    ],
)  # fmt: skip
def test_corrupt_file_error_names_the_file(cifar_fixture_rw, name, damage, expected):
    path = cifar_fixture_rw / "cifar-100-python" / name
    damage(path)
    with pytest.raises(CorruptDatasetError, match=expected) as err:
        make_dm(cifar_fixture_rw, val_size=0).setup()
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


# ------------------------------------------------------------------------------------- real records
@needs_shared
def test_real_partial_cifar100_loads_with_verification_off():
    with pytest.raises(ChecksumMismatchError, match="train"):
        CIFAR100DataModule(root=SHARED_CIFAR, download=False).setup("fit")
    with pytest.warns(ChecksumMismatchWarning):
        dm = CIFAR100DataModule(root=SHARED_CIFAR, download=False, verify_checksums=False, val_size=0)
        dm.setup()
    assert len(dm.train_set) == 1117 and len(dm.test_set) == 916
    assert dm.class_names == FINE_LABEL_NAMES  # the official meta (its md5 matches)
    for ds in (dm.train_set, dm.test_set):
        assert ds.labels.unique().numel() == 100
    raw = pickle.loads((SHARED_CIFAR / "cifar-100-python/train").read_bytes(), encoding="latin1")
    assert dm.train_set.labels[:3].tolist() == raw["fine_labels"][:3] == [19, 29, 0]
    assert np.array_equal(dm.train_set.images[5].numpy().reshape(-1), raw["data"][5])
    # Real photos normalise to roughly zero mean, unit variance per channel.
    x = dm.transform_batch(dm.train_set.images)
    assert x.mean((0, 2, 3)).abs().max() < 0.15 and (x.std((0, 2, 3)) - 1).abs().max() < 0.15


# ------------------------------------------------------------------------------------- exact resume
def _train_batches(dm, epoch, first=0):
    """Model inputs of the training batches ``first..`` of ``epoch``, from a fresh train loader."""
    loader = dm.train_dataloader()
    loader.set_epoch(epoch)
    loader.first_batch = lambda: first
    return [(dm.transform_batch(x, seed=seed), y) for x, y, seed in loader]


def test_training_batch_depends_only_on_seed_epoch_and_index(cifar_fixture_ro):
    dm = make_dm(cifar_fixture_ro, val_size=50, batch_size=16, shuffle_seed=3)
    dm.setup()
    torch.manual_seed(0)
    full = _train_batches(dm, epoch=2)
    fresh = make_dm(cifar_fixture_ro, val_size=50, batch_size=16, shuffle_seed=3)  # as after a resume
    fresh.setup()
    torch.manual_seed(99)  # another global RNG state: must not matter
    resumed = _train_batches(fresh, epoch=2, first=5)
    after = torch.random.get_rng_state()  # and loading drew nothing from it
    torch.manual_seed(99)
    assert torch.equal(after, torch.random.get_rng_state())
    assert len(full) == 150 // 16 and len(resumed) == len(full) - 5
    for (x, y), (x2, y2) in zip(full[5:], resumed, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(full[0][0], _train_batches(dm, epoch=3)[0][0])  # epochs differ
    other_seed = make_dm(cifar_fixture_ro, val_size=50, batch_size=16, shuffle_seed=4)
    other_seed.setup()
    assert not torch.equal(full[0][1], _train_batches(other_seed, epoch=2)[0][1])


class _IndexRecorder(_Recorder):
    """Records each training batch by (epoch, batch_idx); can fail once at a given global step."""

    def __init__(self, fail_at_step: int | None = None):
        super().__init__()
        self.by_index: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.fail_at_step = fail_at_step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at_step:
            raise RuntimeError("simulated crash")
        self.by_index[(self.current_epoch, batch_idx)] = (batch[0].clone(), batch[1].clone())
        return super().training_step(batch, batch_idx)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("saved_at", ["batch_end", "exception"])
def test_lightning_resume_mid_epoch_sees_the_uninterrupted_batches(cifar_fixture_ro, tmp_path, saved_at):
    """A run resumed from a mid-epoch checkpoint gets, for every (epoch, batch_idx) it trains, the batch
    of the uninterrupted run: order and augmentation (fails if the resumed epoch starts over, or if the
    augmentation draws from the global generator, whose state differs after a resume)."""
    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

    def fit(model, callbacks=(), ckpt_path=None):
        L.seed_everything(0, verbose=False)
        dm = make_dm(cifar_fixture_ro, val_size=50, batch_size=32)  # 4 batches per epoch
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks),
            default_root_dir=tmp_path,
        )  # fmt: skip
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        except RuntimeError as e:
            assert "simulated crash" in str(e)

    whole = _IndexRecorder()
    fit(whole)
    assert len(whole.by_index) == 12
    if saved_at == "batch_end":  # saved after global step 6 = epoch 1, batch_idx 1
        fit(_IndexRecorder(), [ModelCheckpoint(tmp_path / "ck", every_n_train_steps=6, save_top_k=-1)])
        ckpt = next(p for p in (tmp_path / "ck").iterdir() if "step=6" in p.name)
    else:  # crash inside training step 6 (epoch 1, batch_idx 2), checkpoint saved by on_exception
        fit(_IndexRecorder(fail_at_step=6), [OnExceptionCheckpoint(tmp_path / "ex")])
        ckpt = tmp_path / "ex" / "on_exception.ckpt"
    resumed = _IndexRecorder()
    torch.manual_seed(12345)  # the resumed process's global RNG differs from the interrupted one's
    fit(resumed, ckpt_path=ckpt)
    first = (1, 2)
    assert sorted(resumed.by_index) == [k for k in sorted(whole.by_index) if k >= first]
    for key, (x, y) in resumed.by_index.items():
        assert torch.equal(y, whole.by_index[key][1]) and torch.equal(x, whole.by_index[key][0]), key


# ------------------------------------------------------------------------------------- checked at set-up
def test_corrupt_test_file_stops_fit_at_setup(cifar_fixture_rw):
    path = cifar_fixture_rw / "cifar-100-python" / "test"
    path.write_bytes(path.read_bytes()[:1000])
    dm = make_dm(cifar_fixture_rw, val_size=8, batch_size=8)
    model = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    with pytest.raises(CorruptDatasetError, match="not a readable CIFAR-100 pickle") as err:
        trainer.fit(model, datamodule=dm)
    assert str(path) in str(err.value)
    assert model.seen["train"] == []  # before the first training step
