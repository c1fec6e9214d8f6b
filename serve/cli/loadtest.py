"""`ditscale loadtest`: throughput and latency percentiles of a running sampler service, per concurrency level.

ditscale loadtest --url http://127.0.0.1:8000 --concurrency 1,4,16 --requests 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipelines.cli.parsers import DefaultsHelpFormatter, nonneg_int, positive_float, positive_int


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale loadtest`."""
    p = argparse.ArgumentParser(
        prog="ditscale loadtest",
        formatter_class=DefaultsHelpFormatter,
        description="Load-test a running sampler service: throughput and p50/p95/p99 latency per concurrency.",
    )
    p.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels (default: %(default)s)")
    p.add_argument(
        "--requests", type=positive_int, default=64, help="requests per concurrency level (default: %(default)s)"
    )
    p.add_argument(
        "--warmup",
        type=nonneg_int,
        default=None,
        help="unmeasured requests before each level (default: the concurrency)",
    )
    p.add_argument(
        "--body", default=None, help="JSON request body (default: a label or prompt chosen from GET /v1/model)"
    )
    p.add_argument("--steps", type=positive_int, default=None, help="steps per request (added to the body)")
    p.add_argument(
        "--token", default=os.environ.get("DITSCALE_API_TOKEN"), help="bearer token (default: $DITSCALE_API_TOKEN)"
    )
    p.add_argument("--timeout", type=positive_float, default=300.0, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def batch_images(response: Any) -> int:
    """Images in the forward batch a generate response ran in: its X-Ditscale-Batch-Images header (one PNG), else
    the JSON body's settings.batch_images (several images, format json); 0 where neither says."""
    header = response.headers.get("X-Ditscale-Batch-Images")
    if header:
        return int(header)
    if response.status_code == 200 and "json" in response.headers.get("Content-Type", ""):
        try:
            return int(response.json()["settings"]["batch_images"])
        except (ValueError, KeyError, TypeError):
            return 0
    return 0


def default_body(url: str, token: str | None = None) -> dict:
    """A valid generate body for the served model (label 0 or a fixed prompt)."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(f"{url.rstrip('/')}/v1/model", headers=headers, timeout=60)
    if r.status_code == 401:
        raise PermissionError(
            f"{url}/v1/model answered 401: the service wants a bearer token; pass --token or set $DITSCALE_API_TOKEN"
            if not token
            else f"{url}/v1/model answered 401: the service refused the token given"
        )
    r.raise_for_status()
    info = r.json()
    return {"prompt": "a red circle on a blue background"} if info.get("conditioning") == "text" else {"label": 0}


def run_load(
    url: str,
    concurrency: int,
    requests_n: int,
    body: dict,
    *,
    token: str | None = None,
    timeout: float = 300.0,
    warmup: int | None = None,
) -> dict:
    """Send `requests_n` generate requests with `concurrency` in flight; throughput and latency percentiles."""
    import numpy as np
    import requests

    endpoint = f"{url.rstrip('/')}/v1/generate"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    local = threading.local()

    def one(i: int) -> tuple[float, int, int]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        payload = {**body, "seed": i}  # distinct seeds: every request is real work
        t0 = time.perf_counter()
        batch = 0
        try:
            r = session.post(endpoint, json=payload, headers=headers, timeout=timeout)
            elapsed = time.perf_counter() - t0  # the response's arrival, before this client parses its body
            status = r.status_code
            batch = batch_images(r)
        except requests.RequestException:
            status, elapsed = -1, time.perf_counter() - t0
        return elapsed, status, batch

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        n_warm = concurrency if warmup is None else warmup
        if n_warm:
            list(pool.map(one, range(10**6, 10**6 + n_warm)))
        t0 = time.perf_counter()
        results = list(pool.map(one, range(requests_n)))
        wall = time.perf_counter() - t0
    lat = np.array([d for d, s, _ in results if s == 200], dtype=np.float64)
    batches = [b for _, s, b in results if s == 200 and b > 0]
    statuses: dict[str, int] = {}
    for _, s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    ok = int(lat.size)
    pct = (lambda q: float(np.percentile(lat, q))) if ok else (lambda q: float("nan"))
    return {
        "concurrency": concurrency,
        "requests": requests_n,
        "ok": ok,
        "statuses": statuses,
        "wall_s": wall,
        "throughput_rps": ok / wall if wall > 0 else float("nan"),
        "p50_s": pct(50),
        "p95_s": pct(95),
        "p99_s": pct(99),
        "mean_s": float(lat.mean()) if ok else float("nan"),
        # Images in the forward batch each request ran in (X-Ditscale-Batch-Images; PNG responses only).
        "mean_batch_images": float(np.mean(batches)) if batches else float("nan"),
    }


def format_table(rows: list[dict], title: str | None = None) -> str:
    """Plain-text table of run_load results."""
    lines = [title] if title else []
    lines.append(
        f"{'conc':>5} {'reqs':>5} {'ok':>5} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} "
        f"{'batch':>6}  statuses"
    )
    for r in rows:
        lines.append(
            f"{r['concurrency']:>5} {r['requests']:>5} {r['ok']:>5} {r['throughput_rps']:>8.2f} "
            f"{r['p50_s'] * 1e3:>9.1f} {r['p95_s'] * 1e3:>9.1f} {r['p99_s'] * 1e3:>9.1f} "
            f"{r.get('mean_batch_images', float('nan')):>6.1f}  {r['statuses']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`ditscale loadtest`: run each concurrency level in turn and print the table."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        levels = [int(c) for c in ns.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--concurrency {ns.concurrency!r}: expected integers like 1,4,16")
    if not levels or min(levels) < 1:
        parser.error(f"--concurrency {ns.concurrency!r}: every level must be >= 1")
    if not ns.url.startswith(("http://", "https://")):
        parser.error(f"--url {ns.url!r}: expected an http(s) URL such as http://127.0.0.1:8000")
    import requests

    try:
        body = json.loads(ns.body) if ns.body else default_body(ns.url, ns.token)
    except json.JSONDecodeError as exc:
        parser.error(f"--body is not valid JSON: {exc}")
    except PermissionError as exc:
        print(f"ditscale loadtest: error: {exc}", file=sys.stderr)
        return 2
    except (requests.RequestException, ValueError) as exc:  # nothing listens, or not a sampler service
        print(f"ditscale loadtest: error: cannot reach the sampler service at {ns.url}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(body, dict):
        parser.error(f"--body {ns.body!r}: expected a JSON object such as '{{\"label\": 0}}'")
    if "seed" in body:  # it was replaced without a word
        parser.error(f"--body {ns.body!r}: leave 'seed' out; each request gets its own (distinct seeds: real work)")
    if ns.steps is not None:
        body["steps"] = ns.steps
    rows = [
        run_load(ns.url, c, ns.requests, body, token=ns.token, timeout=ns.timeout, warmup=ns.warmup) for c in levels
    ]
    print(json.dumps(rows, indent=2) if ns.json else format_table(rows, f"loadtest {ns.url} body={json.dumps(body)}"))
    if any("401" in r["statuses"] for r in rows):
        print(
            "ditscale loadtest: requests were refused with 401: pass --token (or set $DITSCALE_API_TOKEN) to the "
            "service's bearer token",
            file=sys.stderr,
        )
    return 0 if all(r["ok"] == r["requests"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
