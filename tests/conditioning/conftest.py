"""A tiny random CLIP text model with CLIP's real tokenizer, saved once per test session."""

import pytest

from ldm_train.conditioning import write_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip_tiny"), hidden_size=32, num_layers=2, num_heads=2)


@pytest.fixture(scope="session")
def clip_encoder(tiny_clip_dir):
    """The tiny CLIP loaded back through the users' path (`layer="last"`, SD 1.x)."""
    from ldm_train.conditioning import CLIPTextEncoder

    return CLIPTextEncoder(str(tiny_clip_dir))
