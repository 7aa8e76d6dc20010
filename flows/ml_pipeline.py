"""A real ML pipeline under ``CloudSchedTaskRunner``: handwritten-digit classification.

load → feature prep (standardise + PCA) → train four model candidates in parallel (GPU tasks
with deadlines: three spot-tolerant, one real-time) → evaluate → pick the best → batch
inference over chunks of new images. Runs in well under a minute on 2 CPU cores.

Run it: ``python flows/ml_pipeline.py`` (then ``prefect-cloudsched report``). By default every
placement starts a real instance through boto3 / google-cloud-compute against local mocked
clouds (moto and the fake GCE server), and every task body runs on the Dask worker of its own
instance — over TLS, as on a real account; here a real ``distributed`` worker on this machine
stands in for each mocked instance, named after it. The first spot instance is interrupted so
the retry and re-placement are visible; instances are kept warm for the next task of the same
offer and terminated when the run ends. ``--accounting-only`` starts no instance: each body
runs here and is only accounted as if it ran on the instance the scheduler chose.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.futures import wait

from prefect_cloudsched import CloudSchedTaskRunner, Priority, override, requires

SEED = 7


@dataclass(frozen=True)
class Dataset:
    """Train/validation/new-data splits of the digits images (8x8 grey levels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_new: np.ndarray
    y_new: np.ndarray


@requires(cpus=2, memory_gib=4, est_runtime=timedelta(minutes=2))
@task
def load_dataset(noise: float = 0.0) -> Dataset:
    """Load scikit-learn's bundled digits set; hold out a "new data" split for inference."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(SEED)
    if noise:
        x = x + rng.normal(0, noise, size=x.shape)
    x_rest, x_new, y_rest, y_new = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.25, random_state=SEED, stratify=y_rest
    )
    return Dataset(x_train, y_train, x_val, y_val, x_new, y_new)


@requires(
    cpus=8,
    memory_gib=16,
    est_runtime=timedelta(minutes=10),
    spot_ok=True,
    deadline=timedelta(hours=1),
)
@task
def prepare_features(data: Dataset, components: int = 32) -> tuple[Any, Dataset]:
    """Fit scaling + PCA on the training split only, and transform every split."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    prep = make_pipeline(StandardScaler(), PCA(n_components=components, random_state=SEED))
    prep.fit(data.x_train)
    return prep, Dataset(
        prep.transform(data.x_train),
        data.y_train,
        prep.transform(data.x_val),
        data.y_val,
        prep.transform(data.x_new),
        data.y_new,
    )


CANDIDATES: dict[str, dict[str, Any]] = {
    "logreg": {"kind": "logreg", "C": 1.0},
    "mlp": {"kind": "mlp", "hidden": (128, 64)},
    "forest": {"kind": "forest", "trees": 200},
    "boosting": {"kind": "boosting", "rounds": 60},
}


def _build_model(config: dict[str, Any]) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    kind = config["kind"]
    if kind == "logreg":
        return LogisticRegression(C=config["C"], max_iter=2000)
    if kind == "mlp":
        return MLPClassifier(hidden_layer_sizes=config["hidden"], max_iter=400, random_state=SEED)
    if kind == "forest":
        return RandomForestClassifier(n_estimators=config["trees"], random_state=SEED, n_jobs=1)
    if kind == "boosting":
        return HistGradientBoostingClassifier(max_iter=config["rounds"], random_state=SEED)
    raise ValueError(f"unknown model kind {kind!r}")


@requires(
    gpus=1,
    gpu_type="A10G",
    cpus=4,
    memory_gib=16,
    est_runtime=timedelta(minutes=45),
    deadline=timedelta(hours=4),
    spot_ok=True,
    checkpointable=True,
)
@task
def train_candidate(name: str, config: dict[str, Any], data: Dataset) -> tuple[str, Any]:
    """Train one candidate model (spot-tolerant, checkpointable GPU work)."""
    model = _build_model(config)
    model.fit(data.x_train, data.y_train)
    return name, model


@requires(cpus=2, memory_gib=4, est_runtime=timedelta(minutes=3))
@task
def evaluate(candidate: tuple[str, Any], data: Dataset) -> dict[str, Any]:
    """Validation accuracy of one trained candidate."""
    name, model = candidate
    accuracy = float((model.predict(data.x_val) == data.y_val).mean())
    return {"name": name, "accuracy": accuracy, "model": model}


@requires(cpus=1, memory_gib=2, est_runtime=timedelta(minutes=1))
@task
def pick_best(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """The most accurate candidate (ties: the first by name)."""
    return max(sorted(scores, key=lambda s: s["name"]), key=lambda s: s["accuracy"])


@requires(
    gpus=1,
    gpu_type="T4",
    cpus=4,
    memory_gib=16,
    est_runtime=timedelta(minutes=20),
    deadline=timedelta(hours=2),
    spot_ok=True,
)
@task
def batch_inference(best: dict[str, Any], chunk: np.ndarray) -> np.ndarray:
    """Predict one chunk of new images with the chosen model."""
    return best["model"].predict(chunk)


@flow(name="ml-pipeline", task_runner=CloudSchedTaskRunner(max_workers=4), log_prints=True)
def ml_pipeline(chunks: int = 4, noise: float = 0.0) -> dict[str, Any]:
    """Digits classification, end to end; returns the chosen model and its test accuracy."""
    raw = load_dataset.submit(noise)
    prepared = prepare_features.submit(raw).result()
    _, data = prepared
    trained = [
        train_candidate.submit(name, config, data)
        for name, config in CANDIDATES.items()
        if name != "mlp"
    ]
    # The real-time candidate must finish quickly and never be interrupted: a call-site
    # override changes its needs for this one submission only.
    with override(
        gpu_type="T4",
        est_runtime=timedelta(minutes=15),
        deadline=timedelta(minutes=30),
        priority=Priority.REALTIME,
    ):
        trained.append(train_candidate.submit("mlp", CANDIDATES["mlp"], data))
    scores = [evaluate.submit(t, data) for t in trained]
    wait(scores)
    best = pick_best.submit([s.result() for s in scores]).result()
    predictions = batch_inference.map([best] * chunks, np.array_split(data.x_new, chunks)).result()
    accuracy = float((np.concatenate(predictions) == data.y_new).mean())
    print(
        f"best model: {best['name']} (validation {best['accuracy']:.3f}, new data {accuracy:.3f})"
    )
    return {
        "best": best["name"],
        "validation_accuracy": best["accuracy"],
        "test_accuracy": accuracy,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry: run the pipeline on embedded defaults (mocked clouds by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4, help="batch-inference chunks")
    parser.add_argument(
        "--accounting-only",
        action="store_true",
        help="do not provision instances on the mocked clouds; only account each placement",
    )
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be >= 1")
    if args.accounting_only:
        return ml_pipeline(chunks=args.chunks)
    return _run_on_mock_clouds(args.chunks)


#: Seconds an instance stays warm for the next task of its offer; its worker idles longer,
#: so the provisioner always ends an idle instance before its worker is retired.
WARM_SECONDS = 3.0


def _run_on_mock_clouds(chunks: int) -> dict[str, Any]:
    """Provision through real SDK calls against the mocks; run each body on its instance."""
    import logging

    import distributed  # configures its loggers on import: quiet them after

    from prefect_cloudsched import Ledger
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher
    from prefect_cloudsched.core.report import is_attempt
    from prefect_cloudsched.testing.clouds import MockClouds

    logging.getLogger(distributed.__name__).setLevel(logging.WARNING)  # a line per worker event
    owner = "cloudsched-demo"
    print("starting mocked clouds: moto (AWS EC2) and the fake GCE server (GCP), on loopback")
    launcher = LocalWorkerLauncher()
    with MockClouds(owner_id=owner, interrupt_first_spot=1, warm_seconds=WARM_SECONDS) as clouds:
        runner = CloudSchedTaskRunner(
            max_workers=4,
            provisioners=clouds.provisioners,
            executor="dask",
            executor_options={
                "launcher": launcher,  # a local worker per mocked instance (the boot script's)
                "tls": True,
                "idle_timeout": WARM_SECONDS + 2,
                "join_timeout": 60,
            },
        )
        state = ml_pipeline.with_options(task_runner=runner)(chunks=chunks, return_state=True)
        left = clouds.running_instances(owner_id=owner)
        interrupted = list(clouds.interrupted)
    workers_left = launcher.names
    launcher.close()
    run_id = str(state.state_details.flow_run_id)
    ledger = Ledger()
    rows = ledger.instances(run_id=run_id)
    # placement attempts, as the report's tasks column counts them (not the transfer rows)
    ledger_rows = ledger.placements(flow_run_id=run_id)
    placements = [p for p in ledger_rows if is_attempt(p)]
    on_instances = sum(1 for p in placements if p.instance_id)
    recorded = sum(p.interruptions for p in ledger_rows)  # what the report's total says
    by_cloud = {c: sum(r["cloud"] == c for r in rows) for c in ("aws", "gcp")}
    # Two counts, said apart: the mock injects spot reclaims; the ledger (and the report)
    # also records a Dask worker lost under load as an interruption (docs/dask.md).
    print(
        f"instances started: {len(rows)} (aws {by_cloud['aws']}, gcp {by_cloud['gcp']}) for "
        f"{len(placements)} placements, {on_instances} of them on an instance's worker; "
        f"spot reclaims injected by the mock: {len(interrupted)}; interruptions recorded in "
        f"the ledger (reclaims and lost workers): {recorded}; still running: {len(left)} "
        f"instances, {len(workers_left)} workers"
    )
    if left or workers_left:
        raise SystemExit(f"leaked: {[i['instance_id'] for i in left]} {workers_left}")
    return state.result()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the runner has released the instances by the time we get here
        print("interrupted: the run's instances were released", file=sys.stderr)
        raise SystemExit(130) from None
