"""Relation normalisation options (`method.relation_norm`): scale of the relation and of its loss."""

import pytest
import torch
import torch.nn.functional as F

from sr2lora.methods.losses import (
    batch_spectral_relation_loss,
    entrywise_relation_loss,
    relation_spectrum,
    spectral_relation_loss,
)


def feats(seed: int, b: int = 5, L: int = 12, d: int = 32) -> torch.Tensor:
    return torch.randn(b, L, d, generator=torch.Generator().manual_seed(seed)) * 40


def test_l2_eigenvalues_sum_to_number_of_layers():
    ev = relation_spectrum(feats(0), "l2")
    assert torch.allclose(ev.sum(-1), torch.full((5,), 12.0), atol=1e-4)
    assert (ev > -1e-4).all()


def test_trace_eigenvalues_sum_to_one():
    ev = relation_spectrum(feats(1), "trace")
    assert torch.allclose(ev.sum(-1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "trace"])
@pytest.mark.parametrize("loss", [spectral_relation_loss, entrywise_relation_loss, batch_spectral_relation_loss])
def test_normalised_losses_invariant_to_feature_rescaling(norm, loss):
    new, old = feats(2), feats(3)
    a = loss(new, old, relation_norm=norm)
    b = loss(new * 7.5, old * 7.5, relation_norm=norm)
    assert b.item() == pytest.approx(a.item(), rel=1e-4, abs=1e-8)
    assert a.item() > 0


def test_none_is_exactly_the_reference_loss():
    """The reference: eigvalsh of the symmetrised H Hᵀ, smooth-L1 β=1, mean over batch × L."""
    new, old = feats(4), feats(5)
    r_new = new @ new.transpose(1, 2)
    r_old = old @ old.transpose(1, 2)
    ref = F.smooth_l1_loss(
        torch.linalg.eigvalsh(0.5 * (r_new + r_new.transpose(1, 2))),
        torch.linalg.eigvalsh(0.5 * (r_old + r_old.transpose(1, 2))),
        beta=1.0,
    )
    got = spectral_relation_loss(new, old, relation_norm="none")
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    # and it is NOT scale-invariant: the reason the normalised options exist
    assert spectral_relation_loss(new * 2, old * 2).item() > 1.5 * got.item()
