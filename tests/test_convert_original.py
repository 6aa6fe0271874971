"""Import of the authors' original checkpoint layouts, built here key by key from their code's names."""

import pytest
import torch

from vqdiffusion.convert.original import transformer_from_original, vqvae_from_original
from vqdiffusion.models.transformer import TransformerConfig, VQDiffusionTransformer
from vqdiffusion.models.vqvae import VQVAE
from vqdiffusion.tiny import TINY_VQVAE


def original_transformer_checkpoint(model: VQDiffusionTransformer) -> dict:
    """What microsoft/VQ-Diffusion's Text2ImageTransformer state would hold for these weights."""
    sd, orig = model.state_dict(), {}
    p = "transformer.transformer."
    for name in ("emb", "height_emb", "width_emb"):
        orig[f"{p}content_emb.{name}.weight"] = sd[f"latent_image_embedding.{name}.weight"]
    for i in range(model.config.num_layers):
        ours, theirs = f"transformer_blocks.{i}.", f"{p}blocks.{i}."
        for a, b in (("norm1", "ln1"), ("norm2", "ln1_1")):
            orig[f"{theirs}{b}.emb.weight"] = sd[f"{ours}{a}.emb.weight"]
            for leaf in ("weight", "bias"):
                orig[f"{theirs}{b}.linear.{leaf}"] = sd[f"{ours}{a}.linear.{leaf}"]
        for leaf in ("weight", "bias"):
            orig[f"{theirs}ln2.{leaf}"] = sd[f"{ours}norm3.{leaf}"]
            orig[f"{theirs}mlp.0.{leaf}"] = sd[f"{ours}ff.net.0.proj.{leaf}"]
            orig[f"{theirs}mlp.2.{leaf}"] = sd[f"{ours}ff.net.2.{leaf}"]
            for attn in ("attn1", "attn2"):
                for a, b in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj")):
                    orig[f"{theirs}{attn}.{b}.{leaf}"] = sd[f"{ours}{attn}.{a}.{leaf}"]
    for leaf in ("weight", "bias"):
        orig[f"{p}to_logits.0.{leaf}"] = sd[f"norm_out.{leaf}"]
        orig[f"{p}to_logits.1.{leaf}"] = sd[f"out.{leaf}"]
    return orig


def test_text2image_transformer_with_ema_and_null_embedding():
    torch.manual_seed(0)
    config = TransformerConfig(num_embeds=15, height=4, width=4, num_layers=3, num_heads=2, head_dim=8,
                               context_dim=32, num_timesteps=100)
    raw, ema = VQDiffusionTransformer(config).eval(), VQDiffusionTransformer(config).eval()
    null = torch.randn(1, 77, 32)
    ema_state = {k[len("transformer."):]: v for k, v in original_transformer_checkpoint(ema).items()}
    checkpoint = {"model": {**original_transformer_checkpoint(raw), "transformer.empty_text_embed": null,
                            "transformer.condition_emb.some.weight": torch.zeros(1)},
                  "ema": ema_state}
    loaded, loaded_null = transformer_from_original(checkpoint, num_heads=2)
    assert loaded.config.num_layers == 3 and loaded.config.context_dim == 32 and loaded.config.num_embeds == 15
    x_t, t, ctx = torch.randint(0, 16, (2, 16)), torch.tensor([3, 70]), torch.randn(2, 77, 32)
    assert torch.equal(loaded(x_t, t, context=ctx), ema(x_t, t, context=ctx))  # EMA weights by default
    assert torch.equal(loaded_null.embeddings, null[0])
    no_ema, _ = transformer_from_original(checkpoint, num_heads=2, use_ema=False)
    assert torch.equal(no_ema(x_t, t, context=ctx), raw(x_t, t, context=ctx))


def original_vqvae_checkpoint(model: VQVAE) -> dict:
    """taming-style PatchVQGAN names for our VQVAE's weights."""
    sd, orig = model.state_dict(), {}
    n = len(model.config.block_out_channels)

    def resnet(ours, theirs):
        for key, value in sd.items():
            if key.startswith(ours + "."):
                leaf = key[len(ours) + 1:].replace("conv_shortcut", "nin_shortcut")
                orig[f"{theirs}.{leaf}"] = value

    def attention(ours, theirs):
        for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            for leaf in ("weight", "bias"):
                value = sd[f"{ours}.{a}.{leaf}"]
                is_conv = leaf == "weight" and a != "group_norm"  # taming's q/k/v/proj_out are 1x1 convs
                orig[f"{theirs}.{b}.{leaf}"] = value[:, :, None, None] if is_conv else value

    for part in ("encoder", "decoder"):
        for leaf in ("weight", "bias"):
            orig[f"{part}.conv_in.{leaf}"] = sd[f"{part}.conv_in.{leaf}"]
            orig[f"{part}.conv_out.{leaf}"] = sd[f"{part}.conv_out.{leaf}"]
            orig[f"{part}.norm_out.{leaf}"] = sd[f"{part}.conv_norm_out.{leaf}"]
        resnet(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1")
        resnet(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2")
        attention(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1")
    for i, block in enumerate(model.encoder.down_blocks):
        for j in range(len(block.resnets)):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
            if hasattr(block, "attentions"):
                attention(f"encoder.down_blocks.{i}.attentions.{j}", f"encoder.down.{i}.attn.{j}")
        if hasattr(block, "downsamplers"):
            for leaf in ("weight", "bias"):
                ours = f"encoder.down_blocks.{i}.downsamplers.0.conv.{leaf}"
                orig[f"encoder.down.{i}.downsample.conv.{leaf}"] = sd[ours]
    for i, block in enumerate(model.decoder.up_blocks):
        level = n - 1 - i  # taming stores the decoder's levels lowest resolution last
        for j in range(len(block.resnets)):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}")
            if hasattr(block, "attentions"):
                attention(f"decoder.up_blocks.{i}.attentions.{j}", f"decoder.up.{level}.attn.{j}")
        if hasattr(block, "upsamplers"):
            for leaf in ("weight", "bias"):
                orig[f"decoder.up.{level}.upsample.conv.{leaf}"] = sd[f"decoder.up_blocks.{i}.upsamplers.0.conv.{leaf}"]
    for name in ("quant_conv", "post_quant_conv"):
        for leaf in ("weight", "bias"):
            orig[f"{name}.{leaf}"] = sd[f"{name}.{leaf}"]
    orig["quantize.embedding"] = sd["quantize.embedding.weight"]
    orig["quantize.cluster_size"] = torch.ones(15)  # EMA statistics of the ITHQ tokenizer: ignored
    return {"model": orig}


def test_patch_vqgan_layout_with_attention_blocks():
    torch.manual_seed(0)
    model = VQVAE(TINY_VQVAE).eval()
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    loaded = vqvae_from_original(original_vqvae_checkpoint(model))
    assert loaded.config.down_block_types == TINY_VQVAE.down_block_types
    assert loaded.config.up_block_types == TINY_VQVAE.up_block_types
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(images), model.encode(images))
    codes = model.encode(images)
    assert torch.allclose(loaded.decode(codes), model.decode(codes))


class Planted:
    """Unpickling this runs code: what a malicious .pth would carry."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pth_that_holds_code_is_refused_unless_trusted(tmp_path, capsys):
    from vqdiffusion.convert.original import load_original

    data, planted = tmp_path / "plain.pth", tmp_path / "planted.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, data)
    torch.save({"model": {"w": torch.ones(2)}, "extra": Planted()}, planted)
    assert load_original(data)["epoch"] == 3
    with pytest.raises(ValueError, match="would run code named in the file.*trust_pickle=True"):
        load_original(planted)
    assert "code ran" not in capsys.readouterr().out
    load_original(planted, trust_pickle=True)
    assert "code ran" in capsys.readouterr().out
