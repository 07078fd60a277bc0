"""Is tritonserver still serving? Readiness by a request through each model, not only health.

Triton's health endpoint says 200 while a python-backend stub is dead (half the requests then
fail with `Stub process ... is not healthy`) and cannot answer at all when the process is paused
(SIGSTOP). `watch` therefore sends, every PROBE_INTERVAL_S, small requests through each ready
model (an all-zero photo array, or a 2 x 2 PNG for the image model), unless real requests were
served since the last round and none failed (Triton's own metrics say so; probes would only
add to the load then, and a model that fails real requests is probed again). PROBE_FAILURES
failed rounds in a row (an error, or no answer within PROBE_TIMEOUT_S while no other request was
answered either: a busy server is not a hung one) and the server's process group is killed, so
serve restarts it.
"""

import io
import json
import math
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request

from flower_model.config import ServeConfig

PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 5.0  # an idle server answers a probe in milliseconds
METRICS_TIMEOUT_S = 2.0
PROBE_FAILURES = 3  # failed rounds in a row before the server is killed (bounded: < 60 s)
PROBE_REPEATS = 2  # requests per model and instance in a round: each instance is likely hit
HEALTH_TIMEOUT_S = 1.0
BINARY_HEADER = "Inference-Header-Content-Length"  # Triton's binary tensor extension
PROBE_IMAGE_SIDE = 2
PROBES_FAILED = f"{PROBE_FAILURES} probe rounds in a row failed"  # starts what `watch` returns
METRIC = re.compile(r'^nv_inference_request_(success|failure)\{model="([^"]+)".* ([0-9.e+]+)$')


def _open(request, timeout: float):
    """Loopback without proxies (a proxy from the environment must never see these)."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        request, timeout=timeout
    )


def _base(config: ServeConfig) -> str:
    return f"http://{config.host}:{config.http_port}"


def is_ready(config: ServeConfig) -> bool:
    try:
        with _open(f"{_base(config)}/v2/health/ready", HEALTH_TIMEOUT_S):
            return True
    except OSError:
        return False


def _json(url: str, data: bytes | None = None):
    with _open(urllib.request.Request(url, data=data), PROBE_TIMEOUT_S) as response:
        return json.loads(response.read())


def _tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (PROBE_IMAGE_SIDE, PROBE_IMAGE_SIDE)).save(buffer, "PNG")
    return buffer.getvalue()


Probe = tuple[int, bytes]  # an infer request in Triton's binary extension: JSON length, body


def probe_request(config_json: dict) -> Probe | None:
    """A request for a model's one input, None when the input is not one of the contract's
    (uint8 photos or BYTES files)."""
    inputs = config_json.get("input", [])
    if len(inputs) != 1:
        return None
    tensor = inputs[0]
    dims = [int(dim) for dim in tensor.get("dims", [])]
    if not dims or min(dims) < 1:
        return None  # a variable size: no one request fits it
    if tensor.get("data_type") == "TYPE_UINT8":
        data, datatype = bytes(math.prod(dims)), "UINT8"
    elif tensor.get("data_type") == "TYPE_STRING":
        png = _tiny_png()
        data, datatype = len(png).to_bytes(4, "little") + png, "BYTES"
    else:
        return None
    header = {
        "inputs": [
            {
                "name": tensor["name"],
                "shape": [1, *dims] if config_json.get("max_batch_size") else dims,
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    encoded = json.dumps(header).encode()
    return len(encoded), encoded + data


def _probes(config: ServeConfig) -> dict[str, Probe]:
    """{model name: probe body} for every READY model of the repository."""
    index = _json(f"{_base(config)}/v2/repository/index", data=b"{}")
    probes = {}
    for entry in index:
        if entry.get("state") != "READY":
            continue
        probe = probe_request(_json(f"{_base(config)}/v2/models/{entry['name']}/config"))
        if probe is not None:
            probes[entry["name"]] = probe
    return probes


def _send(config: ServeConfig, model: str, probe: Probe) -> None:
    length, body = probe
    request = urllib.request.Request(
        f"{_base(config)}/v2/models/{model}/infer",
        data=body,
        headers={BINARY_HEADER: str(length), "Content-Type": "application/octet-stream"},
    )
    with _open(request, PROBE_TIMEOUT_S) as response:
        response.read()


def _counts(config: ServeConfig) -> dict[tuple[str, str], float]:
    """Triton's request counters per (kind, model); {} when the metrics do not answer."""
    url = f"http://{config.host}:{config.metrics_port}/metrics"
    try:
        with _open(url, METRICS_TIMEOUT_S) as response:
            text = response.read().decode()
    except OSError:
        return {}
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = METRIC.match(line)
        if match:
            key = (match.group(1), match.group(2))
            counts[key] = counts.get(key, 0.0) + float(match.group(3))
    return counts


def _grew(kind: str, before: dict, after: dict) -> bool:
    """Whether Triton counted requests of `kind` (success, failure) since `before`."""
    return bool(before) and any(
        after[key] > before.get(key, 0.0) for key in after if key[0] == kind
    )


def _served_cleanly(before: dict, after: dict) -> bool:
    """Real requests succeeded since `before` and none failed, by Triton's counters."""
    return _grew("success", before, after) and not _grew("failure", before, after)


def probe_round(config: ServeConfig, probes: dict, before: dict) -> tuple[str | None, dict]:
    """(what failed, or None; the counters after the round) for one round of probes."""
    now = _counts(config)
    if _served_cleanly(before, now):
        return None, now
    try:
        probes.update(probes or _probes(config))
        for model, probe in probes.items():
            for _ in range(PROBE_REPEATS * max(1, config.instances)):
                _send(config, model, probe)
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip()[:200]
        return f"{error.geturl().rsplit('/', 2)[-2]}: HTTP {error.code} {detail}", {}
    except (OSError, ValueError) as error:
        later = _counts(config)
        if _grew("success", now, later):
            return None, later  # slow because busy: other requests were answered meanwhile
        return f"no answer ({error})", {}
    return None, _counts(config)


def watch(process: subprocess.Popen, config: ServeConfig, stopping) -> str | None:
    """Wait for `process` to exit, probing it meanwhile; kill its group after PROBE_FAILURES
    failed rounds in a row. Return why it was killed, None when it exited by itself."""
    probes: dict[str, Probe] = {}
    failures, counts = 0, _counts(config)
    while True:
        try:
            process.wait(timeout=PROBE_INTERVAL_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        if stopping.is_set():
            continue
        problem, counts = probe_round(config, probes, counts)
        failures = failures + 1 if problem else 0
        if failures >= PROBE_FAILURES:
            os.killpg(process.pid, signal.SIGKILL)  # a paused (SIGSTOP) server dies too
            process.wait()
            return f"{PROBES_FAILED} ({problem})"
