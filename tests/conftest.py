import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory):
    """A random CLIP text model + tokenizer saved like a hub folder (the paper presets' encoder)."""
    from vqdiffusion.tiny import tiny_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    model, tokenizer = tiny_clip()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
