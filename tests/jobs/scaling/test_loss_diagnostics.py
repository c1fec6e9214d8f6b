"""`ditscale fit` judges the validation-loss law and its N*(C) as it judges the FID law: only the FID law was
checked, so a loss law whose exponent sat on its bound with the whole search range as its interval was printed
with no warning."""

from __future__ import annotations

import numpy as np

from jobs.scaling.fit import fit_all
from jobs.scaling.summary import format_laws


def _points(loss_trend: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    pts = []
    for i, n in enumerate((1e5, 3e5, 1e6)):
        for b in (1e12 * 10 ** (k / 4) for k in range(6)):
            fid = (100 * (b / 1e12) ** -0.5 + 5) * (1 + 0.2 * i) * (1 + 0.01 * rng.standard_normal())
            loss = (0.2 * (b / 1e12) ** -0.3 + 0.3) * (1 + 0.05 * i) if loss_trend else 0.5
            loss *= 1 + (0.002 if loss_trend else 0.05) * rng.standard_normal()
            pts.append(
                {"model": f"m{i}", "params": n, "budget_flops": b, "flops": b, "step": 1, "fid": fid}
                | {"val_loss": loss}
            )
    return pts


def test_a_flat_validation_loss_gets_its_own_sentences_and_a_clean_one_none():
    report, _ = fit_all(_points(loss_trend=False), n_boot=20)
    loss = [d for d in report["diagnostics"] if d.get("about") == "val_loss"]
    codes = {d["code"] for d in loss}
    assert {"open_interval", "wide_interval"} <= codes, loss
    assert any("alpha" in d["message"] and "search bound" in d["message"] for d in loss)
    assert all("validation-loss" in d["message"].lower() for d in loss)  # each says which law it is about
    assert not any(d["code"] == "isoflop_no_images" for d in loss)  # said once, for the FID isoFLOPs
    text = format_laws(report)
    assert "Validation-loss law: The upper end of the 95% interval of alpha is the search bound" in text
    # A loss that follows a power law in compute passes every law check (the smallest size, best at every budget,
    # may still get its isoFLOP edge sentence).
    clean, _ = fit_all(_points(loss_trend=True), n_boot=20)
    law_codes = {d["code"] for d in clean["diagnostics"] if d.get("about") == "val_loss"}
    assert law_codes <= {"isoflop_edge"}, clean["diagnostics"]
    assert clean["loss_law"]["params"]["alpha"] > 0.1


def test_points_without_a_validation_loss_get_no_loss_sentences():
    """FID-only points (or val_samples: 0): the laws' text says the loss law was not fitted; the diagnostics did
    not repeat it under nested prefixes."""
    pts = [{k: v for k, v in p.items() if k != "val_loss"} for p in _points(loss_trend=True)]
    report, _ = fit_all(pts, n_boot=20)
    assert "error" in report["loss_law"]
    assert not [d for d in report["diagnostics"] if d.get("about") == "val_loss"]
