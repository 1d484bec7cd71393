"""Central (hospital-level) differential privacy: Flower's server-side fixed-clipping wrapper.

Each hospital's update (its weights minus the global ones) is clipped to
`central-dp-clip`, the clipped updates are averaged *unweighted* (so one
hospital moves the mean by at most clip / m for m replies), and Gaussian noise
with standard deviation `central-dp-noise` x clip / m is added to the mean:
`flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping` does the
clipping and the noise. The guarantee protects a whole hospital's contribution
to the model; it is reported apart from the hospitals' own sample-level epsilon.

Sensitivity: the neighbouring run replaces one hospital's update with any other
(replace-one, the neighbourhood of hospital-level DP with a fixed number of
hospitals). Two clipped updates can differ by up to 2 x clip, so the mean of m
moves by up to 2 x clip / m, and the noise added is `central-dp-noise` x
2 x clip / m: the noise multiplier the accountant is given is relative to that
sensitivity. (Flower's wrapper adds noise multiplier x clip / m, calibrated to
adding or removing one update, so it is given twice the run's multiplier.)

Accounting: every released round is one Gaussian mechanism with noise multiplier
z and no sampling amplification (every connected hospital takes part), so the
epsilon after R rounds is Opacus's RDP accountant fed (z, sample rate 1, R steps).
Flower's own accountant needs Google's dp-accounting package, which we do not pin.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Message
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy
from opacus.accountants import RDPAccountant

from common.config import RunConfig

WEIGHT_KEY = "central-dp-weight"  # every reply weighs 1: the mean is unweighted


REPLACE_ONE = 2.0  # sensitivity of the mean of m clipped updates, in units of clip / m
SENSITIVITY = "2 x clip / m (replace one hospital's update)"


def wrap(strategy: Strategy, config: RunConfig) -> Strategy:
    """Flower's wrapper adds sd = its multiplier x clip / m; replace-one needs the run's multiplier
    x 2 clip / m."""
    return DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=REPLACE_ONE * config.central_dp_noise, clipping_norm=config.central_dp_clip,
        num_sampled_clients=config.min_hospitals,
    )


def before_aggregation(strategy: Strategy, replies: list[Message], train: bool) -> None:
    """Train: equal weights, noise scaled to the replies actually averaged this round (the
    sensitivity 2 clip / m is that of the mean the server releases).
    Evaluate: metrics weighted by each hospital's test examples, as without central DP."""
    for reply in replies:
        metrics = next(iter(reply.content.metric_records.values()))
        metrics[WEIGHT_KEY] = 1.0 if train else float(metrics["num-examples"])  # type: ignore[arg-type]
    if train and isinstance(strategy, DifferentialPrivacyServerSideFixedClipping):
        strategy.num_sampled_clients = max(len(replies), 1)


def central_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    if releases == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, releases)]
    return float(accountant.get_epsilon(delta=delta))


def card_section(config: RunConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if config.central_dp_noise <= 0:
        return {"enabled": False}
    releases = len({r["round"] for r in rows if r["hospital"] == "all" and r["split"] == "train"})
    return {
        "enabled": True,
        "protects": "each hospital's whole contribution (hospital-level DP)",
        "noise_multiplier": config.central_dp_noise,
        "clipping_norm": config.central_dp_clip,
        "sensitivity": SENSITIVITY,
        "noise_sd": f"{config.central_dp_noise:g} x 2 x {config.central_dp_clip:g} / m (m replies averaged)",
        "releases": releases,
        "delta": config.delta,
        "epsilon": central_epsilon(config.central_dp_noise, releases, config.delta),
        "accountant": "opacus rdp, Gaussian mechanism, no sampling amplification",
    }
