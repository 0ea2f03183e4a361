"""aMUSEd in the one Pipeline: the reference sampler setting, the CLIP text side, every Pipeline method and the CLI on
tiny random models (stand-ins for the U-ViT and the VQ where the project's modules are not needed), offline; with
diffusers importable, token choices against its AmusedScheduler / AmusedPipeline."""

import dataclasses
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.families import amused as fam
from maskgit.pipeline import Pipeline
from maskgit.sampling.decoding import decode

transformers = pytest.importorskip("transformers")

K, GRID, CELL, E, C, L = 32, 4, 4, 32, 24, 16  # codes, token grid, pixels per token, CLIP width, projection, length


# ---------------------------------------------------------------- tiny parts

def write_clip(root):
    """A random 2-layer CLIP text model with projection and a character-level CLIP tokenizer, saved with
    save_pretrained into root/text_encoder and root/tokenizer."""
    vocab = fam.write_char_clip_tokenizer(root / "tokenizer", L).get_vocab()
    cfg = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=E, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=L,
                                      projection_dim=C, bos_token_id=vocab["<|startoftext|>"],
                                      eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    transformers.CLIPTextModelWithProjection(cfg).save_pretrained(root / "text_encoder", safe_serialization=True)


class TinyUVit(nn.Module):
    """A stand-in with the U-ViT's interface: (ids (B,h,w), hidden (B,L,E), pooled (B,C), micro (B,5)) -> (B,K,h,w)."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.config = SimpleNamespace(sample_size=GRID, encoder_hidden_size=E)
        self.codebook_size, self.mask_id = K, K
        self.emb, self.pos = nn.Embedding(K + 1, d), nn.Parameter(torch.randn(GRID * GRID, d))
        self.text, self.pool, self.micro = nn.Linear(E, d), nn.Linear(C, d), nn.Linear(5, d)
        self.mix, self.head = nn.Linear(d, d), nn.Linear(d, K)

    def forward(self, ids, hidden, pooled, micro):
        B = ids.shape[0]
        h = self.emb(ids).flatten(1, 2) + self.pos  # (B, N, d)
        h = h + (self.text(hidden).mean(1) + self.pool(pooled) + self.micro(micro / 64))[:, None]
        h = h + self.mix(torch.nn.functional.gelu(h))
        return 3 * self.head(h).transpose(1, 2).reshape(B, K, GRID, GRID)


class TinyVQ(nn.Module):
    """A stand-in with the VQ's interface: patches -> nearest code, codes -> patches."""

    def __init__(self):
        super().__init__()
        self.codebook = nn.Parameter(torch.rand(K, 3 * CELL * CELL))
        self.codebook_size, self.downsample, self.channels = K, CELL, 3

    def encode(self, images):
        B, _, H, W = images.shape
        p = nn.functional.unfold(images, CELL, stride=CELL).transpose(1, 2)  # (B, N, 3*c*c)
        return torch.cdist(p, self.codebook[None].expand(B, -1, -1)).argmin(-1).view(B, H // CELL, W // CELL)

    def decode(self, tokens):
        B, h, w = tokens.shape
        p = self.codebook[tokens.flatten(1)].transpose(1, 2)  # (B, 3*c*c, N)
        return nn.functional.fold(p, (h * CELL, w * CELL), CELL, stride=CELL)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("amused")
    write_clip(root)
    return root


@pytest.fixture(scope="module")
def pipe(clip_dir):
    torch.manual_seed(1)
    tok, tr, text = fam.assemble(TinyVQ(), TinyUVit(), fam.ClipText.load(clip_dir))
    return Pipeline(tok, tr, text_encoder=text)


def image(seed=0):
    return torch.rand(1, 3, GRID * CELL, GRID * CELL, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the sampler setting

def table_logits(seed=0, n=GRID * GRID):
    """A deterministic stand-in model: logits depend on the grid's tokens (and on the branch for CFG)."""
    g = torch.Generator().manual_seed(seed)
    w, b, u = torch.randn(K + 1, K, generator=g), torch.randn(n, K, generator=g) * 2, torch.randn(n, K, generator=g)

    def fn(tokens, guided):
        ctx = w[tokens].mean(1, keepdim=True)  # (B, 1, K)
        cond = b + ctx
        return (cond, cond + u) if guided else cond
    return fn


def amused_cfg(**kw):
    return SampleConfig(**{**fam.SAMPLING, **kw})


@pytest.mark.parametrize("steps", [4, 12])
def test_amused_sampler_leaves_the_reference_count_masked(steps):
    counts = []
    decode(table_logits(), torch.full((2, 16), K), amused_cfg(steps=steps), K, torch.Generator().manual_seed(0),
           lambda step, cur, s: counts.append((cur == K).sum(1).tolist()))
    for i in range(steps - 1):  # floor(N cos(pi/2 (i+1)/T)) in float32 (at 8/12: 7, not 8), >= 1 revealed and masked
        prev = 16 if i == 0 else counts[i - 1][0]
        gamma = torch.cos(torch.tensor([[i + 1]]) / steps * math.pi / 2)
        want_i = max(1, min(prev - 1, int((16 * gamma).floor())))
        assert counts[i] == [want_i, want_i], (i, counts[i])
    assert counts[-1] == [0, 0]


def test_amused_sampler_is_seeded_and_keeps_known_tokens():
    start = torch.full((2, 16), K)
    start[:, :5] = torch.arange(5)
    a = decode(table_logits(), start, amused_cfg(), K, torch.Generator().manual_seed(3))
    b = decode(table_logits(), start, amused_cfg(), K, torch.Generator().manual_seed(3))
    c = decode(table_logits(), start, amused_cfg(), K, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :5], start[:, :5]) and (a < K).all()


def test_amused_sampler_settings_are_checked():
    with pytest.raises(MaskGITError, match="sampler"):
        decode(table_logits(), torch.full((1, 16), K), amused_cfg(sampler="nope"), K)
    with pytest.raises(MaskGITError, match="confidence"):
        decode(table_logits(), torch.full((1, 16), K), amused_cfg(order="halton"), K)


def test_the_project_orders_still_run_on_the_same_model():
    out = decode(table_logits(), torch.full((1, 16), K), amused_cfg(sampler="maskgit", order="halton"), K,
                 torch.Generator().manual_seed(0))
    assert (out < K).all()


def _reference_loop(logits_fn, tokens, steps, scale, temperature, generator):
    """diffusers' AmusedScheduler driven as its pipeline drives it (uncond + w (cond - uncond), w = 1 + scale)."""
    from diffusers import AmusedScheduler
    sched = AmusedScheduler(mask_token_id=K)
    sched.set_timesteps(steps, temperature)
    latents = tokens.view(-1, GRID, GRID).clone()
    for t in sched.timesteps:
        flat = latents.view(len(latents), -1)
        if scale > 0:
            cond, unc = logits_fn(flat, True)
            out = unc + (1 + scale) * (cond - unc)
        else:
            out = logits_fn(flat, False)
        out = out.transpose(1, 2).reshape(len(latents), K, GRID, GRID)  # (B, K, h, w) as the U-ViT gives
        latents = sched.step(out, t, latents, generator=generator).prev_sample
    return latents.view(len(latents), -1)


@pytest.mark.parametrize("scale,steps,seed", [(9.0, 12, 0), (0.0, 8, 1), (3.0, 5, 2)])
def test_amused_sampler_picks_the_reference_schedulers_tokens(scale, steps, seed):
    pytest.importorskip("diffusers")
    fn = table_logits(seed)
    start = torch.full((3, 16), K)
    ours = decode(fn, start, amused_cfg(steps=steps, cfg=scale), K, torch.Generator().manual_seed(seed))
    ref = _reference_loop(fn, start, steps, scale, (2, 0), torch.Generator().manual_seed(seed))
    assert torch.equal(ours, ref)


# ---------------------------------------------------------------- the text side

def test_prompts_are_encoded_as_the_reference_builds_them(pipe, clip_dir):
    tok = transformers.CLIPTokenizer.from_pretrained(clip_dir / "tokenizer")
    model = transformers.CLIPTextModelWithProjection.from_pretrained(clip_dir / "text_encoder").eval()
    ids = tok(["a red cube", ""], return_tensors="pt", padding="max_length", truncation=True,
              max_length=tok.model_max_length).input_ids
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, return_dict=True)
    assert ids.shape == (2, L)
    cond = pipe.text_condition(["a red cube", ""])
    torch.testing.assert_close(cond.emb, out.hidden_states[-2], rtol=0, atol=0)
    torch.testing.assert_close(cond.pooled, out.text_embeds, rtol=0, atol=0)
    torch.testing.assert_close(cond.neg_emb[1], out.hidden_states[-2][1], rtol=0, atol=1e-6)  # "" for guidance
    torch.testing.assert_close(cond.neg_pooled[1], out.text_embeds[1], rtol=0, atol=1e-6)
    neg = pipe.text_condition(["a red cube"], "blurry")
    assert not torch.equal(neg.neg_pooled, cond.neg_pooled)


def test_micro_conditioning_is_the_reference_default(pipe):
    assert pipe.transformer.micro_conds.tolist() == [[GRID * CELL, GRID * CELL, 0, 0, 6]]
    assert pipe.sample_defaults.steps == 12 and pipe.sample_defaults.cfg == 9.0
    assert pipe.sample_defaults.sampler == "amused"


def test_guidance_batches_the_negative_prompt_as_the_unconditional_branch(pipe):
    tokens = torch.full((1, 16), K)
    labels = torch.tensor([-1])
    c1, u1 = pipe.logits_fn(labels, pipe.text_condition(["a cat"]))(tokens, True)
    c2, u2 = pipe.logits_fn(labels, pipe.text_condition(["a cat"], ["a dog"]))(tokens, True)
    plain = pipe.logits_fn(labels, pipe.text_condition(["a cat"]))(tokens, False)
    dog = pipe.logits_fn(labels, pipe.text_condition(["a dog"]))(tokens, False)
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(c1, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(u2, dog, atol=1e-5, rtol=1e-5)
    assert (u1 - u2).abs().max() > 1e-4


# ---------------------------------------------------------------- Pipeline methods

def test_generate_with_prompts_and_negative_prompts(pipe):
    imgs = pipe.generate(prompts=["a red cube", "a blue ball"], negative_prompts="blurry", steps=4, cfg=2.0,
                         seed=0, output="tensor")
    again = pipe.generate(prompts=["a red cube", "a blue ball"], negative_prompts="blurry", steps=4, cfg=2.0,
                          seed=0, output="tensor")
    other = pipe.generate(prompts=["a red cube", "a blue ball"], steps=4, cfg=2.0, seed=1, output="tensor")
    assert imgs.shape == (2, 3, GRID * CELL, GRID * CELL) and torch.equal(imgs, again)
    assert not torch.equal(imgs, other)
    pil = pipe.generate(prompts=["x"], seed=0)
    assert pil[0].size == (GRID * CELL, GRID * CELL)


def test_generate_without_prompts_is_refused(pipe):
    with pytest.raises(MaskGITError, match="text-conditioned"):
        pipe.generate(num=1, steps=2)


def test_inpaint_keeps_the_tokens_outside_the_box(pipe):
    x = pipe.tokenizer.decode(torch.randint(0, K, (1, GRID, GRID)))
    before = pipe.encode(x)
    out = pipe.inpaint(x, box=(0, 0, 2 * CELL, 2 * CELL), prompt="a cat", negative_prompt="dog", feather=0,
                       steps=4, output="tensor")
    after = pipe.encode(out[None] if out.dim() == 3 else out)
    keep = torch.ones(GRID, GRID, dtype=torch.bool)
    keep[:2, :2] = False
    assert torch.equal(after[0][keep], before[0][keep])


def test_outpaint_and_img2img(pipe):
    x = pipe.tokenizer.decode(torch.randint(0, K, (1, GRID, GRID)))
    out = pipe.outpaint(x, "right", 1, prompt="a wall", steps=3, output="tensor")
    assert out.shape[-1] == (GRID + 1) * CELL
    tokens = pipe.encode(x)
    light = pipe.encode(pipe.img2img(x, "a cat", strength=0.25, steps=12, seed=0, output="tensor"))
    full = pipe.img2img(x[0], "a cat", strength=1.0, steps=4, seed=0, output="tensor")
    assert full.shape == (3, GRID * CELL, GRID * CELL)
    # strength 0.25 of 12 steps: decoding resumes at step 9, each position masked with p = cos(pi/2 * 9/12) ~ 0.38
    assert 0 < (light != tokens).sum() < GRID * GRID
    for bad in (0, 1.5, True, "0.5"):
        with pytest.raises(MaskGITError, match="strength"):
            pipe.img2img(x, "a cat", strength=bad)
    with pytest.raises(MaskGITError, match="no step"):
        pipe.img2img(x, "a cat", strength=0.05, steps=12)


def test_img2img_masks_as_the_reference_add_noise():
    """The reference masks position j when u_j < cos(pi/2 * start / T), u drawn first from the generator."""
    g = torch.Generator().manual_seed(5)
    u = torch.rand(1, 16, generator=g)
    ratio = torch.cos(torch.tensor([[9]]) / 12 * math.pi / 2)
    assert 0 < (u < ratio).sum() < 16  # the same arithmetic the Pipeline uses; exact parity below with diffusers


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_cpu_precisions_run_with_the_vq_in_float32(clip_dir, precision):
    torch.manual_seed(1)
    tok, tr, text = fam.assemble(TinyVQ(), TinyUVit(), fam.ClipText.load(clip_dir))
    p = Pipeline(tok, tr, text_encoder=text, precision=precision)
    imgs = p.generate(prompts=["a cat"], steps=3, output="tensor")
    assert imgs.dtype == torch.float32 and p.tokenizer.vq.codebook.dtype == torch.float32


def test_the_micro_conditioning_reaches_the_model(pipe):
    tokens = torch.full((1, 16), K)
    cond = pipe.text_condition(["a cat"])
    a = pipe.logits_fn(torch.tensor([-1]), cond)(tokens, False)
    tr = pipe.transformer
    saved = tr.micro_conds.clone()
    try:
        tr.micro_conds[0, 4] = 2.0
        b = pipe.logits_fn(torch.tensor([-1]), cond)(tokens, False)
    finally:
        tr.micro_conds.copy_(saved)
    assert (a - b).abs().max() > 1e-4


def test_a_folder_without_its_parts_is_a_clear_error(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "AmusedPipeline"}))
    with pytest.raises(MaskGITError, match="vqvae"):
        fam.load_parts(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(MaskGITError, match="not an aMUSEd"):
        fam.load_parts(tmp_path)


# ---------------------------------------------------------------- the released layout (the project's modules)

def write_released(root, seed=0):
    """A tiny aMUSEd folder in diffusers' layout: model_index.json, scheduler/, vqvae/, transformer/, CLIP."""
    models = pytest.importorskip("maskgit.models.amused")
    vqm = pytest.importorskip("maskgit.models.amused_vq")
    store = pytest.importorskip("maskgit.storage.amused")
    torch.manual_seed(seed)
    uvit = models.UVit2D(models.UVit2DConfig.from_dict(dict(
        hidden_size=32, use_bias=False, hidden_dropout=0.0, cond_embed_dim=C, micro_cond_encode_dim=2,
        micro_cond_embed_dim=10, encoder_hidden_size=E, vocab_size=K + 1, codebook_size=K, in_channels=16,
        block_out_channels=16, num_res_blocks=1, downsample=False, upsample=False, block_num_heads=2,
        num_hidden_layers=1, num_attention_heads=2, attention_dropout=0.0, intermediate_size=32, layer_norm_eps=1e-6,
        ln_elementwise_affine=True, sample_size=GRID)))
    vq = vqm.AmusedVQ(vqm.AmusedVQConfig.from_dict(dict(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 8, 16], layers_per_block=1, act_fn="silu",
        latent_channels=8, sample_size=GRID * CELL, num_vq_embeddings=K, norm_num_groups=4, vq_embed_dim=8,
        scaling_factor=0.18215, norm_type="group", mid_block_add_attention=True, lookup_from_codebook=True,
        force_upcast=False)))
    for p in list(uvit.parameters()) + list(vq.parameters()):  # non-trivial norms and biases
        p.data.add_(torch.randn_like(p) * 0.02)
    store.save_uvit(uvit, root / "transformer")
    store.save_vq(vq, root / "vqvae")
    write_clip(root)
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "AmusedScheduler", "mask_token_id": K, "masking_schedule": "cosine"}))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "AmusedPipeline"}))
    return root


@pytest.fixture(scope="module")
def released(request, tmp_path_factory):
    """The folder diffusers saved where it is installed, else one written by the project's own save functions."""
    pytest.importorskip("maskgit.storage.amused")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return write_released(tmp_path_factory.mktemp("released"))
    return request.getfixturevalue("reference")[0]


def test_load_pipeline_from_the_released_layout(released):
    p = fam.load_pipeline(released, Pipeline)
    assert p.grid == (GRID, GRID) and p.tokenizer.config.downsample == CELL
    imgs = p.generate(prompts=["a cat"], steps=3, output="tensor")
    assert imgs.shape == (1, 3, GRID * CELL, GRID * CELL)
    if (released / "model_index.json").exists():
        try:
            q = Pipeline.load(released)
        except (MaskGITError, TypeError) as e:
            pytest.skip(f"Pipeline.load does not dispatch aMUSEd folders yet: {e}")
        assert torch.equal(q.generate(prompts=["a cat"], steps=3, output="tensor"), imgs)


def test_cli_samples_from_the_released_layout(released, tmp_path):
    try:
        Pipeline.load(released)
    except (MaskGITError, TypeError):
        pytest.skip("Pipeline.load does not dispatch aMUSEd folders yet")
    out = tmp_path / "cat.png"
    r = subprocess.run([sys.executable, "-m", "maskgit", "sample", "--model", str(released), "--prompt", "a cat",
                        "--steps", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from PIL import Image
    assert Image.open(out).size[0] >= GRID * CELL


class DiffusersUVit(nn.Module):
    """diffusers' UVit2DModel in the U-ViT interface (test only: checks everything around the architecture)."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        c = m.config
        self.config = SimpleNamespace(sample_size=c.sample_size, encoder_hidden_size=c.encoder_hidden_size)
        self.codebook_size, self.mask_id = m.config.codebook_size, m.config.vocab_size - 1

    def forward(self, ids, hidden, pooled, micro):
        return self.m(ids, micro_conds=micro, pooled_text_emb=pooled, encoder_hidden_states=hidden)


class DiffusersVQ(nn.Module):
    """diffusers' VQModel in the VQ interface (images in [0, 1] go in as they are: the reference does not normalise)."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.codebook_size, self.channels = m.config.num_vq_embeddings, 3
        self.downsample = 2 ** (len(m.config.block_out_channels) - 1)

    def encode(self, images):
        lat = self.m.encode(images).latents
        B, _, h, w = lat.shape
        return self.m.quantize(lat)[2][2].reshape(B, h, w)

    def decode(self, tokens):
        B, h, w = tokens.shape
        shape = (B, h, w, self.m.config.latent_channels)
        return self.m.decode(tokens, force_not_quantize=True, shape=shape).sample.clip(0, 1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """diffusers' AmusedPipeline on tiny random parts, saved in the released layout, and ours on the same modules."""
    d = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("diffusers")
    write_clip(root)
    torch.manual_seed(0)
    uvit = d.UVit2DModel(hidden_size=32, use_bias=False, hidden_dropout=0.0, cond_embed_dim=C, micro_cond_encode_dim=2,
                         micro_cond_embed_dim=10, encoder_hidden_size=E, vocab_size=K + 1, codebook_size=K,
                         in_channels=16, block_out_channels=16, num_res_blocks=1, downsample=False, upsample=False,
                         block_num_heads=2, num_hidden_layers=1, num_attention_heads=2, attention_dropout=0.0,
                         intermediate_size=32, layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=GRID)
    vq = d.VQModel(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                   up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 8, 16], layers_per_block=1,
                   latent_channels=8, num_vq_embeddings=K, norm_num_groups=4, vq_embed_dim=8,
                   lookup_from_codebook=True, sample_size=GRID * CELL)
    with torch.no_grad():
        for p in list(uvit.parameters()) + list(vq.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    text = fam.ClipText.load(root)
    ref = d.AmusedPipeline(vqvae=vq.eval(), tokenizer=text.tokenizer, text_encoder=text.model,
                           transformer=uvit.eval(), scheduler=d.AmusedScheduler(mask_token_id=K))
    ref.set_progress_bar_config(disable=True)
    ref.save_pretrained(root, safe_serialization=True)
    tok, tr, te = fam.assemble(DiffusersVQ(vq), DiffusersUVit(uvit), text)
    return root, ref, Pipeline(tok, tr, text_encoder=te)


@pytest.mark.parametrize("cfg,steps,seed,neg", [(9.0, 12, 0, None), (0.0, 6, 3, None), (4.0, 8, 1, "blurry")])
def test_tokens_match_diffusers_amused_pipeline(reference, cfg, steps, seed, neg):
    _, ref, ours = reference
    prompts = ["a red cube on a table", "a cat"]
    ref_neg = None if neg is None else [neg] * 2  # the reference takes one string only for one prompt
    want = ref(prompts, num_inference_steps=steps, guidance_scale=1 + cfg, negative_prompt=ref_neg,
               output_type="latent",
               generator=torch.Generator().manual_seed(seed)).images  # (B, h, w) tokens
    got = ours.decode_tokens(torch.full((2, GRID * GRID), ours.mask_id), torch.tensor([-1, -1]),
                             ours.sample_config(steps=steps, cfg=cfg), seed,
                             text=ours.text_condition(prompts, neg))
    assert torch.equal(got.view(-1, GRID, GRID), want.view(-1, GRID, GRID))
    images = ours.generate(prompts=prompts, negative_prompts=neg, steps=steps, cfg=cfg, seed=seed, output="tensor")
    ref_images = ref(prompts, num_inference_steps=steps, guidance_scale=1 + cfg, negative_prompt=ref_neg,
                     output_type="pt",
                     generator=torch.Generator().manual_seed(seed)).images
    assert (images - ref_images).abs().max() < 1e-5


def test_img2img_matches_diffusers(reference):
    d = pytest.importorskip("diffusers")
    _, ref, ours = reference
    i2i = d.AmusedImg2ImgPipeline(**ref.components)
    i2i.set_progress_bar_config(disable=True)
    x = image(2)
    want = i2i(["a cat"], image=x, strength=0.5, num_inference_steps=12, guidance_scale=10.0, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    got = ours.img2img(x, "a cat", strength=0.5, seed=0, output="tensor")
    assert (got - want).abs().max() < 1e-5


def test_our_modules_load_the_folder_diffusers_saved(reference):
    pytest.importorskip("maskgit.storage.amused")
    root, ref, _ = reference
    ours = fam.load_pipeline(root, Pipeline)
    want = ref(["a cat"], num_inference_steps=12, guidance_scale=10.0, output_type="latent",
               generator=torch.Generator().manual_seed(0)).images
    got = ours.decode_tokens(torch.full((1, GRID * GRID), ours.mask_id), torch.tensor([-1]), ours.sample_config(),
                             0, text=ours.text_condition(["a cat"]))
    assert (got.view(-1, GRID, GRID) == want.view(-1, GRID, GRID)).float().mean() >= 0.99
    i2i = pytest.importorskip("diffusers").AmusedImg2ImgPipeline(**ref.components)
    i2i.set_progress_bar_config(disable=True)
    x = image(2)  # images go into the VQ as they are, in [0, 1] (the reference's processor does not normalise)
    want = i2i(["a cat"], image=x, strength=0.5, num_inference_steps=12, guidance_scale=10.0, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert (ours.img2img(x, "a cat", strength=0.5, seed=0, output="tensor") - want).abs().max() < 1e-3


def test_sample_config_field_is_a_plain_default():
    assert SampleConfig().sampler == "maskgit"
    assert dataclasses.replace(SampleConfig(), sampler="amused").sampler == "amused"


def test_server_generates_from_prompts_like_the_library(pipe):
    pytest.importorskip("fastapi")
    import asyncio
    import base64
    import io

    import httpx
    import numpy as np
    from PIL import Image

    from maskgit.serving.app import ServerConfig, create_app
    app = create_app(pipe, "amused-tiny", ServerConfig(max_wait_ms=0))

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
                page = await c.get("/")
                model = (await c.get("/v1/models")).json()["models"][0]
                r = await c.post("/v1/generate", json={"prompt": "a red cube", "negative_prompt": "blue",
                                                       "seed": 3, "steps": 3, "cfg": 2.0})
                return page, model, r

    page, model, r = asyncio.run(main())
    assert page.status_code == 200 and model["conditioning"] == "text"
    assert r.status_code == 200, r.text
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
    want = pipe.generate(prompts=["a red cube"], negative_prompts="blue", seed=3, steps=3, cfg=2.0, output="np")
    assert np.array_equal(got, want.reshape(got.shape))


def test_power_of_two_chunks_slice_the_pooled_embedding_too(pipe):
    """compile() runs the transformer on power-of-two chunks of a batch: the pooled rows must be sliced alike."""
    from maskgit.inference.compile import pow2_chunks
    tokens, labels = torch.randint(0, K, (3, GRID * GRID)), torch.tensor([-1, -1, -1])
    cond = pipe.text_condition(["a", "b b", "c"], "d")
    whole = pipe.logits_fn(labels, cond)(tokens, True)
    pipe._compiled = pow2_chunks(pipe.transformer, max_chunk=2)  # 6 rows -> 2 + 2 + 2 (no compiler needed)
    try:
        chunked = pipe.logits_fn(labels, cond)(tokens, True)
    finally:
        pipe._compiled = None
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert "Pipeline" in repr(pipe)


def test_inpaint_matches_diffusers(reference):
    d = pytest.importorskip("diffusers")
    _, ref, ours = reference
    inp = d.AmusedInpaintPipeline(**ref.components)
    inp.set_progress_bar_config(disable=True)
    x = image(4)
    mask = torch.zeros(1, 1, GRID * CELL, GRID * CELL)
    mask[..., CELL:3 * CELL, 0:2 * CELL] = 1  # token cells (1..2, 0..1): the same token mask on both sides
    want = inp(["a cat"], image=x, mask_image=mask, num_inference_steps=12, guidance_scale=10.0, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    got = ours.inpaint(x, mask=mask[0, 0] > 0, prompt="a cat", feather=0, seed=0, output="tensor")
    inside = mask[0, 0] > 0  # ours keeps the input's pixels outside the mask; the reference returns the decode
    assert (got[0][:, inside] - want[0][:, inside]).abs().max() < 1e-5


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_cpu_precisions_run_on_the_released_layout(released, precision):
    """bf16 (packed or plain bf16 linears) and int8 (dynamically quantised linears) replace the U-ViT's Linear
    layers with modules that hold no .weight: the model must not read one."""
    p = Pipeline.load(released, precision=precision)
    assert p.precision == precision
    imgs = p.generate(prompts=["a cat", ""], steps=3, output="np")
    assert imgs.shape == (2, GRID * CELL, GRID * CELL, 3)
