"""SeTok against tensors produced by the original code, for every case found in the fixture folder."""

from __future__ import annotations

import pytest
import torch

from tests.golden import cases_of, classify, load_case
from visual_token_compression import SeTokConfig
from visual_token_compression.modeling.setok import SeTokCompressor
from visual_token_compression.modeling.setok_clustering import sincos_position_encoding_2d
from visual_token_compression.modeling.vision import VisionFeatures
from visual_token_compression.tools.conversion.setok import convert_state_dict
from visual_token_compression.tools.tiny import tiny_text_config

METHOD = "setok"
REQUIRED = {"inputs.features", "inputs.density_noise", "outputs.tokens", "outputs.idx_cluster", "outputs.score"}


def kind_of(case) -> str:
    if case.name == "index":
        return "index"  # test_index_lists_every_case
    names = set(case.tensors)
    if not REQUIRED <= names or "weights.out.weight" not in names:
        raise case.unknown("SeTok")
    return "masked" if "inputs.token_mask" in names else "plain"


KINDS = classify(METHOD, kind_of)
CASES = cases_of(KINDS, "plain", "masked")


def compressor_for(case) -> SeTokCompressor:
    """Our module at the case's widths: a tower with patch_size 1 gives the case's grid; weights converted."""
    ctor, forward, dims = case.manifest["constructor_args"], case.manifest["forward_args"], case.manifest["dims"]
    height, width = dims["grid"]
    assert height == width, "the original only supports square grids"
    config = SeTokConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": ctor["hidden_dim"],
            "image_size": height,
            "patch_size": 1,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
        },
        text_config=tiny_text_config(),
        threshold=forward["effective_threshold"],
        k=forward["effective_k"],
        fallback_num_tokens=ctor["min_cluster_num"],
        compressor_num_heads=ctor["nheads"],
        intra_cluster_layers=ctor["inner_cluster_layers"],
        inter_cluster_layers=ctor["intra_cluster_layers"],
        compressor_intermediate_size=ctor["dim_feedforward"],
        token_feat_dim=ctor["token_feat_dim"],
        compressor_dropout=ctor["proj_drop"],
        compressor_attention_dropout=ctor["attn_drop"],
    )
    module = SeTokCompressor(config).eval()
    converted = convert_state_dict(case.group("weights"))
    missing, unexpected = module.load_state_dict(
        {k.removeprefix("model.compressor."): v for k, v in converted.items()}, strict=False
    )
    assert not unexpected and all(name.startswith("projector.") for name in missing), (missing, unexpected)
    return module


def run(case, module, assign_masked_tokens=True, extra_view: torch.Tensor | None = None):
    inputs = case.group("inputs")
    features, noise = inputs["features"][None], inputs["density_noise"][None]
    mask = inputs.get("token_mask")
    mask = None if mask is None else mask[None]
    if extra_view is not None:
        features = torch.cat([features, extra_view[None]])
        noise = torch.cat([noise, torch.zeros_like(noise)])
        mask = None if mask is None else torch.cat([mask, torch.ones_like(mask)])
    with torch.no_grad():
        return module(
            VisionFeatures(single_level=features),
            token_mask=mask,
            density_noise=noise,
            assign_masked_tokens=assign_masked_tokens,
        )


def assert_matches_original(case, output, view: int = 0):
    expected = case.group("outputs")
    num_tokens = int(expected["num_tokens"])
    atol = case.atol
    assert int(output.num_tokens[view]) == num_tokens
    torch.testing.assert_close(output.scores[view], expected["score"][0], atol=atol, rtol=0)
    assert torch.equal(output.cluster_labels[view], expected["idx_cluster"])
    sizes = torch.bincount(output.cluster_labels[view], minlength=num_tokens)
    assert sizes.tolist() == expected["cluster_sizes"].tolist() == case.manifest["results"]["cluster_sizes"]
    torch.testing.assert_close(output.cluster_tokens[view, :num_tokens], expected["tokens"], atol=atol, rtol=0)
    assert output.token_mask[view].sum() == num_tokens


@pytest.mark.parametrize("name", KINDS)
def test_every_case_has_known_kind(name):
    kind_of(load_case(METHOD, name))


def test_every_check_has_cases():
    assert {"index", "plain", "masked"} <= set(KINDS.values()), KINDS


@pytest.mark.parametrize("name", cases_of(KINDS, "index"))
def test_index_lists_every_case(name):
    index = load_case(METHOD, name).manifest["cases"]
    assert sorted(index) == CASES
    for case_name, entry in index.items():
        results = load_case(METHOD, case_name).manifest["results"]
        assert (entry["num_tokens"], entry["cluster_sizes"]) == (results["num_tokens"], results["cluster_sizes"])


@pytest.mark.parametrize("name", CASES)
def test_position_encoding_matches_original(name):
    case = load_case(METHOD, name)
    height, width = case.manifest["dims"]["grid"]
    expected = case.tensors["outputs.pos_emb"]
    table = sincos_position_encoding_2d(height, width, expected.shape[-1])
    torch.testing.assert_close(table, expected, atol=case.atol, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_clusters_and_tokens_match_original(name):
    """Scores, labels, cluster sizes, token count and token features, reproducing the original exactly."""
    case = load_case(METHOD, name)
    assert_matches_original(case, run(case, compressor_for(case)))


@pytest.mark.parametrize("name", CASES)
def test_batched_view_matches_original(name):
    """Next to a view of unrelated noise (another cluster count, hence padding), the case is unchanged."""
    case = load_case(METHOD, name)
    generator = torch.Generator().manual_seed(0)
    noise_view = torch.randn(case.tensors["inputs.features"].shape, generator=generator) * 3
    output = run(case, compressor_for(case), extra_view=noise_view)
    assert_matches_original(case, output, view=0)


@pytest.mark.parametrize("name", cases_of(KINDS, "masked"))
def test_masked_tokens_are_left_out_by_default(name):
    """Our fix of the original's bug Q5: masked patches get no cluster and are pooled nowhere.

    Unmasked patches keep the original's labels (masked columns never change their distances to centers);
    cluster 0 no longer absorbs the masked patches, so its token changes and the others do not.
    """
    case = load_case(METHOD, name)
    valid = case.tensors["inputs.token_mask"] > 0
    expected = case.group("outputs")
    output = run(case, compressor_for(case), assign_masked_tokens=False)
    labels = output.cluster_labels[0]
    assert (labels[~valid] == -1).all()
    assert torch.equal(labels[valid], expected["idx_cluster"][valid])
    num_tokens = int(expected["num_tokens"])
    sizes = torch.bincount(labels[valid], minlength=num_tokens)
    assert sizes.sum() == valid.sum() and sizes[0] == expected["cluster_sizes"][0] - (~valid).sum()
    assert not torch.allclose(output.cluster_tokens[0, 0], expected["tokens"][0], atol=1e-3)
    # the inter-cluster block mixes every token, so only the scores and labels are expected to be unchanged
    torch.testing.assert_close(output.scores[0], expected["score"][0], atol=case.atol, rtol=0)
