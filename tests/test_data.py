"""Dataset, collate and the duration-bucketing sampler (including DDP sharding and resume)."""

import numpy as np
import pytest
import torch

from asr.audio import AudioError, write_audio
from asr.data.dataset import AudioDataset, collate_batch
from asr.data.sampler import DurationBucketSampler
from asr.text import CharTokenizer

DUR = [round(0.5 + (i * 37 % 23) / 5, 2) for i in range(101)]


def flat(batches):
    return sorted(i for b in batches for i in b)


def test_every_item_once_per_epoch_and_caps_respected():
    s = DurationBucketSampler(DUR, batch_size=8, max_batch_seconds=20.0, num_buckets=5, seed=1)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert flat(batches) == list(range(len(DUR)))
        for b in batches:
            assert len(b) <= 8
            assert len(b) == 1 or len(b) * max(DUR[i] for i in b) <= 20.0


def test_shuffle_is_seeded_and_changes_with_epoch():
    a = DurationBucketSampler(DUR, batch_size=4, seed=3)
    b = DurationBucketSampler(DUR, batch_size=4, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(DurationBucketSampler(DUR, batch_size=4, seed=4)) != list(a)


def test_buckets_reduce_padding():
    s = DurationBucketSampler(DUR, batch_size=8, num_buckets=10, seed=0)
    padded = sum(len(b) * max(DUR[i] for i in b) for b in s)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(DUR), generator=g).tolist()
    random_batches = [perm[i:i + 8] for i in range(0, len(perm), 8)]
    padded_random = sum(len(b) * max(DUR[i] for i in b) for b in random_batches)
    assert padded < 0.8 * padded_random


def test_sortagrad_first_epoch_shortest_first():
    s = DurationBucketSampler(DUR, batch_size=5, sortagrad=True, seed=0)
    longest = [max(DUR[i] for i in b) for b in s]
    assert longest == sorted(longest)
    s.set_epoch(1)
    longest = [max(DUR[i] for i in b) for b in s]
    assert longest != sorted(longest)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards_are_equal_sized_and_cover_everything(world):
    shards = [list(DurationBucketSampler(DUR, batch_size=6, seed=7, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    covered = set(i for s in shards for b in s for i in b)
    assert covered == set(range(len(DUR)))
    one = DurationBucketSampler(DUR, batch_size=6, seed=7).global_batches()
    # rank r's k-th batch is global batch k * world + r
    for r, s in enumerate(shards):
        for k, b in enumerate(s):
            assert b == one[(k * world + r) % len(one)]


def test_resume_skips_consumed_batches_once():
    s = DurationBucketSampler(DUR, batch_size=4, seed=2)
    s.set_epoch(5)
    full = list(s)
    state = s.state_dict(batches_done=7)
    t = DurationBucketSampler(DUR, batch_size=4, seed=2)
    t.load_state_dict(state)
    assert len(t) == len(full) - 7
    assert list(t) == full[7:]
    assert list(t) == full  # the skip is for the interrupted pass only


def write_clips(tmp_path, n=4):
    items = []
    for i in range(n):
        y = np.full(1600 * (i + 1), 0.1 * (i + 1), np.float32)
        write_audio(tmp_path / f"c{i}.wav", y, 16000, subtype="FLOAT")
        items.append({"id": f"c{i}", "audio": str(tmp_path / f"c{i}.wav"), "duration": len(y) / 16000,
                      "text": ["ye", "yes", "yesn", "yes n"][i], "label": ["yes", "no"][i % 2]})
    return items


def test_dataset_and_collate(tmp_path):
    items = write_clips(tmp_path)
    tok = CharTokenizer.english()
    ds = AudioDataset(items, tokenizer=tok, labels=["yes", "no"])
    batch = collate_batch([ds[i] for i in range(4)])
    assert batch["wav"].shape == (4, 6400)
    assert batch["wav_lengths"].tolist() == [1600, 3200, 4800, 6400]
    assert torch.all(batch["wav"][0, 1600:] == 0) and torch.allclose(batch["wav"][1, :3200], torch.tensor(0.2))
    assert batch["token_lengths"].tolist() == [2, 3, 4, 5]
    assert tok.decode(batch["tokens"][3].tolist()) == "YES N"
    assert batch["labels"].tolist() == [0, 1, 0, 1]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=DurationBucketSampler(ds.durations, batch_size=2),
                                         collate_fn=collate_batch)
    assert sorted(i for b in loader for i in b["ids"]) == ["c0", "c1", "c2", "c3"]


def test_augmentation_is_reproducible_per_epoch(tmp_path):
    items = write_clips(tmp_path, 2)
    noise = lambda wav, g: wav + 0.01 * torch.randn(wav.shape, generator=g)
    ds = AudioDataset(items, augment=noise, seed=5)
    a, b = ds[1]["wav"], ds[1]["wav"]
    torch.testing.assert_close(a, b)
    ds.set_epoch(1)
    assert not torch.allclose(a, ds[1]["wav"])
    clean = AudioDataset([items[0], dict(items[1], augment=False)], augment=noise, seed=5)
    torch.testing.assert_close(clean[1]["wav"], AudioDataset(items)[1]["wav"])  # read as it is
    assert not torch.allclose(clean[0]["wav"], AudioDataset(items)[0]["wav"])


def test_bad_files_raise_or_are_skipped_and_counted(tmp_path, caplog):
    items = write_clips(tmp_path, 2)
    items.append({"id": "gone", "audio": str(tmp_path / "gone.wav")})
    with pytest.raises(AudioError, match="gone.wav: file not found"):
        AudioDataset(items)[2]
    ds = AudioDataset(items, skip_bad=True)
    batch = collate_batch([ds[i] for i in range(3)])
    assert batch["skipped"] == 1 and batch["ids"] == ["c0", "c1"] and ds.bad_files == 1
    assert "gone.wav" in caplog.text


def test_unknown_label_names_the_item(tmp_path):
    items = write_clips(tmp_path, 1)
    with pytest.raises(ValueError, match=r"'c0'.*label 'yes' is not one of"):
        AudioDataset(items, labels=["up", "down"])[0]
