"""The network against the reference (medim 0.1.2, model "SAM-Med3D") on randomised weights, and its loader."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import medim
import pytest
import torch
from safetensors.torch import save_file

from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.model import build_sam_med3d, load_sam_med3d
from SAMMed3DLib.model.image_encoder import RelPosAttention
from SAMMed3DLib.testing.random_weights import random_model, randomise_

TOLERANCE = 2e-5


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def reference_model(**config: object) -> torch.nn.Module:
    return medim.create_model("SAM-Med3D", **config).eval()


def assert_equivalent(reference: torch.nn.Module, ours: torch.nn.Module, seed: int, point_counts=(1, 3, 10)) -> None:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 1, 128, 128, 128, generator=generator)
    with torch.inference_mode():
        expected = reference.image_encoder(image)
        embedding = ours.encode(image)
        assert embedding.shape == expected.shape
        assert relative_error(embedding, expected) < TOLERANCE
        image_pe = reference.prompt_encoder.get_dense_pe()
        for count in point_counts:
            points = torch.rand(1, count, 3, generator=generator) * 128 - 0.5
            labels = torch.randint(-1, 2, (1, count), generator=generator)
            labels[0, 0] = 1
            masks = [None, torch.zeros(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32, generator=generator)]
            for mask in masks:
                sparse, dense = reference.prompt_encoder(points=(points, labels), boxes=None, masks=mask)
                for multimask in (False, True):
                    logits_ref, iou_ref = reference.mask_decoder(expected, image_pe, sparse, dense, multimask)
                    logits, iou = ours.decode(expected, points, labels, mask, multimask=multimask)
                    assert logits.shape == logits_ref.shape == (1, 3 if multimask else 1, 32, 32, 32)
                    assert relative_error(logits, logits_ref) < TOLERANCE
                    assert relative_error(iou, iou_ref) < TOLERANCE
        mask = torch.randn(1, 1, 32, 32, 32, generator=generator)  # training's mask-only steps: no points at all
        sparse, dense = reference.prompt_encoder(points=None, boxes=None, masks=mask)
        logits_ref, iou_ref = reference.mask_decoder(expected, image_pe, sparse, dense, False)
        logits, iou = ours.decode(expected, None, None, mask)
        assert relative_error(logits, logits_ref) < TOLERANCE
        assert relative_error(iou, iou_ref) < TOLERANCE


def test_state_dict_has_the_published_names_and_shapes() -> None:
    ours = build_sam_med3d().state_dict()
    reference = reference_model().state_dict()
    assert len(ours) == 324
    assert list(ours) == list(reference)
    assert all(ours[key].shape == reference[key].shape for key in reference)
    model = build_sam_med3d()
    counts = {
        part: sum(p.numel() for p in getattr(model, part).parameters())
        for part in ("image_encoder", "prompt_encoder", "mask_decoder")
    }
    assert counts == {"image_encoder": 92_924_928, "prompt_encoder": 8_668, "mask_decoder": 7_575_636}


def test_full_network_matches_reference() -> None:
    reference = randomise_(reference_model(), seed=0)
    ours = build_sam_med3d().eval()
    ours.load_state_dict(reference.state_dict())
    assert_equivalent(reference, ours, seed=0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_networks_match_reference(seed: int) -> None:
    """The same code at small widths, several seeds (the reference's decoder MLP and IoU head widths are fixed)."""
    reference = randomise_(
        reference_model(
            encoder_embed_dim=96,
            encoder_depth=4,
            encoder_num_heads=2,
            encoder_global_attn_indexes=[1, 3],
            prompt_embed_dim=48,
        ),
        seed,
    )
    ours = build_sam_med3d("tiny", decoder_mlp_dim=2048, iou_head_hidden_dim=256).eval()
    ours.load_state_dict(reference.state_dict())
    assert_equivalent(reference, ours, seed, point_counts=(1, 10))


def explicit_window_attention(attention: RelPosAttention, x: torch.Tensor, mask_padding: bool) -> torch.Tensor:
    """The reference's relative-position formula (its `add_decomposed_rel_pos`) written out over the whole
    zero-padded S^3 window, token by token."""
    grid, size, heads, dim = x.shape[1], attention.grid_size, attention.num_heads, attention.head_dim
    window = torch.zeros(1, size, size, size, x.shape[-1], dtype=x.dtype)
    window[:, :grid, :grid, :grid] = x
    q, k, v = attention.qkv(window).reshape(size, size, size, 3, heads, dim).permute(3, 4, 0, 1, 2, 5)
    i = torch.arange(size)
    a, b, c, xk, yk, zk = torch.meshgrid(i, i, i, i, i, i, indexing="ij")
    table = {"d": attention.rel_pos_d, "h": attention.rel_pos_h, "w": attention.rel_pos_w}
    bias = (
        (q[:, a, b, c] * table["d"][a - zk + size - 1]).sum(-1)
        + (q[:, a, b, xk] * table["h"][b - zk + size - 1]).sum(-1)
        + (q[:, a, b, yk] * table["w"][yk - zk + size - 1]).sum(-1)
    ).reshape(heads, size**3, size**3)
    logits = attention.scale * q.reshape(heads, -1, dim) @ k.reshape(heads, -1, dim).transpose(1, 2) + bias
    if mask_padding:
        real = torch.zeros(size, size, size, dtype=torch.bool)
        real[:grid, :grid, :grid] = True
        logits[:, :, ~real.flatten()] = float("-inf")
    out = (logits.softmax(-1) @ v.reshape(heads, -1, dim)).transpose(0, 1).reshape(size, size, size, -1)
    return attention.proj(out)[None, :grid, :grid, :grid]


def test_closed_form_padding_equals_explicit_padded_window() -> None:
    """Independent of the reference: the closed form equals attending over every padded token, and masking the
    padding (the textbook choice) would change the output far beyond the tolerance."""
    attention = randomise_(RelPosAttention(dim=16, num_heads=2, grid_size=5), seed=4).double()
    x = torch.randn(1, 3, 3, 3, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        ours = attention(x)
        explicit = explicit_window_attention(attention, x, mask_padding=False)
        masked = explicit_window_attention(attention, x, mask_padding=True)
    assert relative_error(ours, explicit) < 1e-12
    assert relative_error(masked, explicit) > 1e-2


def test_batches_and_bfloat16() -> None:
    model = random_model("tiny", seed=6)
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(2, 1, 128, 128, 128, generator=generator)
    points = torch.rand(2, 2, 3, generator=generator) * 127
    labels = torch.tensor([[1, 0], [1, 1]])
    with torch.inference_mode():
        embeddings = model.encode(images)
        logits, iou = model.decode(embeddings, points, labels, torch.zeros(2, 1, 32, 32, 32))
        single, _ = model.decode(model.encode(images[1:]), points[1:], labels[1:], torch.zeros(1, 1, 32, 32, 32))
        assert relative_error(logits[1:], single) < 1e-5
        half = model.to(torch.bfloat16)
        logits_bf16, _ = half.decode(
            half.encode(images.bfloat16()), points, labels, torch.zeros(2, 1, 32, 32, 32, dtype=torch.bfloat16)
        )
    assert logits_bf16.dtype == torch.bfloat16
    assert relative_error(logits_bf16.float(), logits) < 0.1


# ---- loading checkpoint files ----


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    return random_model("tiny", seed=8).state_dict()


def assert_loads_exactly(path: Path, state: dict) -> None:
    model = load_sam_med3d(path)
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_loads_every_published_layout(tmp_path: Path, tiny_state: dict) -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [120, 180])
    layouts = {
        "plain.pth": tiny_state,
        "published.pth": {"model_state_dict": tiny_state},
        "ddp.pth": {f"module.{key}": value for key, value in tiny_state.items()},
        "training.pth": {
            "epoch": 3,
            "model_state_dict": tiny_state,
            "optimizer_state_dict": optimizer.state_dict(),
            "lr_scheduler_state_dict": scheduler.state_dict(),
            "losses": [0.5, 0.4],
            "dices": [0.1],
            "best_loss": float("inf"),
            "best_dice": 0.0,
            "used_datas": ["a"],
            "args": argparse.Namespace(lr=8e-5, device=torch.device("cpu"), task_name="x"),
        },
    }
    for name, content in layouts.items():
        torch.save(content, tmp_path / name)
        assert_loads_exactly(tmp_path / name, tiny_state)
    save_file({key: value.contiguous() for key, value in tiny_state.items()}, str(tmp_path / "w.safetensors"))
    assert_loads_exactly(tmp_path / "w.safetensors", tiny_state)


def test_full_size_published_layout_round_trip(tmp_path: Path) -> None:
    state = random_model("vit_b_ori", seed=9).state_dict()
    torch.save({"model_state_dict": state}, tmp_path / "turbo_like.pth")
    model = load_sam_med3d(tmp_path / "turbo_like.pth")
    assert model.config.encoder_dim == 768
    assert all(torch.equal(model.state_dict()[key], state[key]) for key in state)


def test_box_capable_checkpoint_reads_point_embedding_count(tmp_path: Path) -> None:
    state = random_model("tiny", seed=10, num_point_embeddings=4).state_dict()
    torch.save({"model_state_dict": state}, tmp_path / "bbox.pth")
    model = load_sam_med3d(tmp_path / "bbox.pth")
    assert len(model.prompt_encoder.point_embeddings) == 4
    assert torch.equal(
        model.prompt_encoder.point_embeddings[3].weight, state["prompt_encoder.point_embeddings.3.weight"]
    )


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file, not weights\n", "is not a PyTorch checkpoint"),
        (pickle.dumps(_Payload()), "refusing to unpickle"),
    ],
)
def test_refuses_files_that_are_not_checkpoints(tmp_path: Path, content: bytes, message: str, capsys) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(SAMMed3DError, match=message):
        load_sam_med3d(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_refuses_arbitrary_objects_in_a_torch_file(tmp_path: Path, tiny_state: dict, capsys) -> None:
    torch.save({"model_state_dict": tiny_state, "hook": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(SAMMed3DError, match="refusing to unpickle"):
        load_sam_med3d(tmp_path / "evil.pth")
    assert "unpickled!" not in capsys.readouterr().out


def test_names_what_does_not_fit(tmp_path: Path, tiny_state: dict) -> None:
    cases = {
        "missing": (
            {k: v for k, v in tiny_state.items() if "iou_prediction_head" not in k},
            r"6 missing keys \(mask_decoder\.iou_prediction_head\.layers\.0\.weight",
        ),
        "unexpected": ({**tiny_state, "extra.weight": torch.zeros(1)}, r"1 unexpected keys \(extra\.weight\)"),
        "shape": (
            {**tiny_state, "mask_decoder.iou_token.weight": torch.zeros(1, 7)},
            r"mask_decoder\.iou_token\.weight has shape \(1, 7\), expected \(1, 48\)",
        ),
        "width": (
            {**tiny_state, "image_encoder.patch_embed.proj.weight": torch.zeros(5, 1, 16, 16, 16)},
            "no known variant has an encoder width 5",
        ),
        "empty": ({}, "holds no state dict of tensors"),
        "numbers": ({"a": 1, "b": 2}, "holds no state dict of tensors"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, tmp_path / f"{name}.pth")
        with pytest.raises(SAMMed3DError, match=message):
            load_sam_med3d(tmp_path / f"{name}.pth")
    with pytest.raises(SAMMed3DError, match="does not exist"):
        load_sam_med3d(tmp_path / "nowhere.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(SAMMed3DError, match="not a readable .safetensors"):
        load_sam_med3d(tmp_path / "broken.safetensors")


def test_every_parameter_learns() -> None:
    """Fine-tuning needs gradients through the whole network, the closed-form window attention included."""
    model = random_model("tiny", seed=12).train()
    generator = torch.Generator().manual_seed(13)
    embedding = model.encode(torch.randn(1, 1, 128, 128, 128, generator=generator))
    points, labels = torch.rand(1, 2, 3, generator=generator) * 127, torch.tensor([[1, 0]])
    with_mask, _ = model.decode(embedding, points, labels, torch.randn(1, 1, 32, 32, 32, generator=generator))
    without_mask, iou = model.decode(embedding, points, labels, None, multimask=True)
    (with_mask.square().mean() + without_mask.square().mean() + iou.square().mean()).backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []
