"""The text table `ditscale report` prints (jobs.scaling.summary.trial_table)."""

from __future__ import annotations


def test_the_trial_table_keeps_fid_under_its_header_whatever_the_metric():
    # `ditscale report --metric val_loss` printed the loss under "FID" and lost the FID.
    from jobs.scaling.summary import trial_table

    pts = [{"model": "m", "params": 1e5, "budget_flops": 1e11, "flops": 1e11, "fid": 123.4, "val_loss": 0.5123}]
    for metric in ("fid", "val_loss"):
        header, _, row = trial_table(pts, metric).splitlines()
        assert header.split()[:5] == ["model", "params", "budget", "FLOPs", "FID"] and "123.400" in row.split()
    header, _, row = trial_table([{**pts[0], "lpips": 0.25}], "lpips").splitlines()
    assert header.split()[-2:] == ["lpips", "checkpoint"] and row.split()[-2] == "0.25"
