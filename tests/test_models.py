import pytest
import torch

from vqdiffusion.convert.state_dict import load_checked
from vqdiffusion.models.transformer import TransformerConfig, VQDiffusionTransformer
from vqdiffusion.models.vqvae import VQVAE, VectorQuantizer
from vqdiffusion.tiny import TINY_VQVAE

K = 15


def tiny_transformer(**overrides) -> VQDiffusionTransformer:
    config = dict(num_embeds=K, height=4, width=4, num_layers=2, num_heads=2, head_dim=8, context_dim=32)
    config.update(overrides)
    return VQDiffusionTransformer(TransformerConfig(**config)).eval()


def test_log_probs_match_diffusers_transformer2d():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = diffusers.Transformer2DModel(
        num_attention_heads=2, attention_head_dim=8, num_vector_embeds=K + 1, sample_size=4, num_layers=2,
        cross_attention_dim=32, activation_fn="geglu-approximate", num_embeds_ada_norm=100,
        attention_bias=True, norm_type="ada_norm",
    ).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing here, but make every weight matter
        for p in theirs.parameters():
            p.normal_(0, 0.3)
    ours = tiny_transformer()
    load_checked(ours, theirs.state_dict(), "transformer")
    x_t = torch.randint(0, K + 1, (3, 16))
    context = torch.randn(3, 77, 32)
    for t in (0, 17, 99):
        expected = theirs(x_t, encoder_hidden_states=context, timestep=torch.tensor(t)).sample
        got = ours(x_t, torch.full((3,), t), context=context)
        assert got.shape == (3, K, 16)
        assert (got - expected).abs().max() < 1e-5


def test_per_sample_timesteps_equal_separate_calls():
    model = tiny_transformer()
    x_t = torch.randint(0, K + 1, (3, 16))
    context = torch.randn(3, 7, 32)
    batched = model(x_t, torch.tensor([3, 50, 99]), context=context)
    for i, t in enumerate((3, 50, 99)):
        alone = model(x_t[i : i + 1], torch.tensor([t]), context=context[i : i + 1])
        assert torch.allclose(batched[i], alone[0], atol=1e-5)


def test_return_logits_gives_the_scores_before_the_log_softmax_in_the_compute_dtype():
    model = tiny_transformer()
    x_t = torch.randint(0, K + 1, (2, 16))
    context = torch.randn(2, 7, 32)
    log_probs = model(x_t, torch.tensor([3, 60]), context=context)
    logits = model(x_t, torch.tensor([3, 60]), context=context, return_logits=True)
    assert logits.shape == (2, K, 16) and not torch.allclose(logits, log_probs)
    torch.testing.assert_close(logits.log_softmax(1), log_probs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x_t, torch.tensor([3, 60]), context=context, return_logits=True).dtype == torch.bfloat16


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny_transformer()
    ckpt = tiny_transformer(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x_t, t, ctx = torch.randint(0, K + 1, (2, 16)), torch.tensor([4, 80]), torch.randn(2, 5, 32)
    for model in (plain, ckpt):
        model.train()
        model(x_t, t, context=ctx).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def _training_pass(monkeypatch, **attention_settings):
    """Log-probabilities and parameter gradients of one float64 training-mode pass of a fixed
    random model, under the given Attention class settings."""
    from vqdiffusion.models.transformer import Attention

    for name, value in attention_settings.items():
        monkeypatch.setattr(Attention, name, value)
    torch.manual_seed(0)
    model = tiny_transformer().double().train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    x_t, t, ctx = torch.randint(0, K + 1, (2, 16)), torch.tensor([4, 80]), torch.randn(2, 5, 32).double()
    out = model(x_t, t, context=ctx)
    (out * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


def _assert_same_pass(got, expected):
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    for name, grad in expected[1].items():
        torch.testing.assert_close(got[1][name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_training_stacks_self_attention_qkv_with_the_same_outputs_and_gradients(monkeypatch):
    """Training's one stacked q/k/v matmul is the three projections' math: same log-probabilities
    and the same gradient on every parameter (float64, so only a wrong stacking can differ)."""
    from vqdiffusion.models.transformer import Attention

    separate = _training_pass(monkeypatch, stack_qkv_in_training=False)
    calls, stack = [], Attention._stacked_qkv
    monkeypatch.setattr(Attention, "_stacked_qkv", lambda self, x: calls.append(1) or stack(self, x))
    stacked = _training_pass(monkeypatch, stack_qkv_in_training=True)
    assert len(calls) == 2  # both blocks' self-attention went through the stacked matmul
    _assert_same_pass(stacked, separate)


def test_residual_in_autocast_dtype_carries_the_stream_in_bf16_only_under_autocast():
    torch.manual_seed(0)
    model = tiny_transformer().train()
    seen = []
    model.transformer_blocks[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    x_t, t, ctx = torch.randint(0, K + 1, (2, 16)), torch.tensor([4, 80]), torch.randn(2, 5, 32)
    plain = model(x_t, t, context=ctx)
    model.residual_in_autocast_dtype = True
    assert torch.equal(model(x_t, t, context=ctx), plain)  # no autocast: nothing changes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x_t, t, context=ctx)
        model.residual_in_autocast_dtype = False
        mixed = model(x_t, t, context=ctx)
    assert seen == [torch.float32, torch.float32, torch.bfloat16, torch.float32]
    assert low.dtype == mixed.dtype == torch.float32  # log-probabilities stay float32
    # both near float32 (bf16 rounding of a 2-layer net), the bf16 stream a little further
    assert (mixed - plain).abs().max() < 0.05 and (low - plain).abs().max() < 0.1
    assert not torch.equal(low, mixed)
    # fp16 autocast keeps the float32 stream: a sum over many blocks can pass fp16's 65504
    model.residual_in_autocast_dtype = True
    with torch.autocast("cpu", dtype=torch.float16):
        model(x_t, t, context=ctx)
    assert seen[-1] == torch.float32


def test_class_conditional_and_unconditional_variants():
    cls = tiny_transformer(context_dim=None, num_classes=10)
    out = cls(torch.randint(0, K + 1, (4, 16)), torch.tensor([1, 2, 3, 4]), class_labels=torch.tensor([0, 3, 9, 10]))
    assert torch.allclose(out.exp().sum(1), torch.ones(4, 16), atol=1e-5)
    with pytest.raises(ValueError, match="class-conditional: pass class_labels"):
        cls(torch.randint(0, K + 1, (1, 16)), 5)
    uncond = tiny_transformer(context_dim=None)
    assert not hasattr(uncond.transformer_blocks[0], "attn2")
    assert uncond(torch.randint(0, K + 1, (2, 16)), 7).shape == (2, K, 16)


def test_vqvae_matches_diffusers_vqmodel():
    diffusers = pytest.importorskip("diffusers")
    cfg = TINY_VQVAE
    torch.manual_seed(0)
    theirs = diffusers.VQModel(
        block_out_channels=list(cfg.block_out_channels), down_block_types=list(cfg.down_block_types),
        up_block_types=list(cfg.up_block_types), latent_channels=cfg.latent_channels,
        num_vq_embeddings=cfg.num_vq_embeddings, vq_embed_dim=cfg.vq_embed_dim,
        layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
    ).eval()
    with torch.no_grad():
        theirs.quantize.embedding.weight.normal_()
    ours = load_checked(VQVAE(cfg), theirs.state_dict(), "vqvae").eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = theirs.encode(images).latents
    assert torch.allclose(ours.encode_latents(images), latents, atol=1e-5)
    _, _, (_, _, their_codes) = theirs.quantize(latents)
    codes = ours.encode(images)
    assert torch.equal(codes.flatten(), their_codes.flatten())
    expected = theirs.decode(theirs.quantize.get_codebook_entry(codes.flatten(), (2, 8, 8, 6)),
                             force_not_quantize=True).sample
    assert torch.allclose(ours.decode(codes), expected, atol=1e-5)


def test_ema_codebook_moves_to_the_mean_of_its_assignments():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=4, dim=2, beta=0.25, ema_decay=0.0).train()
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]]))
    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [9.0, 9.0], [11.0, 11.0]]).T.reshape(1, 2, 2, 2)
    _, loss, codes = quantizer(z)
    assert codes.flatten().tolist() == [0, 0, 1, 1]
    book = quantizer.embedding.weight
    assert torch.allclose(book[0], torch.tensor([0.0, 1.0]), atol=1e-3)  # mean of (1,1), (-1,1)
    assert torch.allclose(book[1], torch.tensor([10.0, 10.0]), atol=1e-3)
    assert not book.requires_grad and loss > 0


def test_checkpoint_shape_mismatch_is_reported():
    model = tiny_transformer()
    state = model.state_dict()
    state["out.weight"] = torch.zeros(K + 3, 16)
    state.pop("norm_out.bias")
    with pytest.raises(ValueError, match=r"does not match its config.*out.weight: checkpoint \(18, 16\) "
                                         r"vs config \(15, 16\).*missing key.*norm_out.bias"):
        load_checked(tiny_transformer(), state, "transformer")


def test_vqvae_decode_rejects_bad_indices():
    model = VQVAE(TINY_VQVAE)
    with pytest.raises(ValueError, match=r"code indices must be in \[0, 14\], got \[0, 15\]"):
        model.decode(torch.tensor([[[0, 15]]]))


@pytest.mark.parametrize("overrides", [{}, {"mlp_ratio": 2}, {"num_classes": 3, "context_dim": None}])
def test_transformer_folder_config_round_trips(overrides):
    """What diffusers' class cannot express (an MLP ratio other than 4, classes) is saved as ours."""
    from vqdiffusion.convert.diffusers_format import transformer_config_from_folder, transformer_config_to_folder

    config = tiny_transformer(**overrides).config
    saved = transformer_config_to_folder(config)
    assert saved["_class_name"] == ("Transformer2DModel" if not overrides else "VQDiffusionTransformer")
    assert transformer_config_from_folder(saved) == config
