"""`fedward` command line. `fedward simulate --help` lists the flags."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from common.config import LR_SCHEDULES, STRATEGY_NAMES, TASK_NAMES, RunConfig
from common.errors import ConfigError, DataError, FedwardError

DEFAULT_DATA = {"tabular": "builtin:breast-cancer"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedward", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="simulate a federation of hospitals on this machine")
    sim.add_argument("--task", default="tabular", help=f"one of {', '.join(TASK_NAMES)}")
    sim.add_argument("--data", help="data path (file or folder); default: breast-cancer for tabular")
    sim.add_argument("--hospitals", type=int, default=4, help="number of virtual hospitals")
    sim.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | natural")
    sim.add_argument("--rounds", type=int, default=0,
                     help="server rounds (0: the task's default, image-cnn 20 under DP and 10 without, sequence-rnn 10, the other tasks 3)")
    sim.add_argument("--strategy", default="fedavg", help=f"one of {', '.join(STRATEGY_NAMES)}")
    sim.add_argument("--epsilon", type=float, default=3.0, help="each hospital's target epsilon for the run")
    sim.add_argument("--delta", type=float, default=1e-5)
    sim.add_argument("--no-dp", action="store_true", help="train without differential privacy")
    sim.add_argument("--max-grad-norm", type=float, default=0.0,
                     help="DP clipping norm (0: the task's default, image-cnn 0.1, the other tasks 1.0)")
    sim.add_argument("--local-epochs", type=int, default=1,
                     help="epochs each hospital trains a round (without DP more where --min-local-steps asks)")
    sim.add_argument("--min-local-steps", type=int, default=-1,
                     help="without DP only (refused under DP): a hospital trains more whole epochs a round until it "
                          "takes at least this many optimiser steps (-1: the task's default, sequence-rnn and image-cnn "
                          "30, otherwise 0 = off; at most 10000)")
    sim.add_argument("--batch-size", type=int, default=0,
                     help="(expected) batch size (0: the task's default, image-cnn and sequence-rnn 128 under DP, "
                          "otherwise 32)")
    sim.add_argument("--lr", type=float, default=0.0, help="local learning rate (0: the task's default)")
    sim.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="auto",
                     help="the local lr over the rounds: constant, or cosine (round r of R at lr x (1 + cos(pi (r-1)/R)) / 2); "
                          "auto, the default: the task's, cosine for image-cnn under DP, otherwise constant")
    sim.add_argument("--model", default="",
                     help="tabular: logreg|mlp; image-cnn: scatter|scatter-cnn|cnn; sequence-rnn: cnn-lstm|cnn-gru|lstm|gru")
    sim.add_argument("--class-weighting", choices=("auto", "true", "false"), default="auto",
                     help="without DP, inverse-frequency class weights in the loss: auto (the default; the task's recipe: every "
                          "task but image-cnn, whose FedAvg lost 2-5 points to them) | true | false; under DP only "
                          "sequence-rnn weights classes, from its noisy class histogram")
    sim.add_argument("--no-class-weighting", action="store_true", help="the same as --class-weighting false")
    sim.add_argument("--server-momentum", type=float, default=-1.0,
                     help="strategy fedavg: server momentum on the mean update, Flower's FedAvgM (0: plain FedAvg; "
                          "-1, the default: the task's, image-cnn 0.7 without DP, sequence-rnn 0.5 under DP, otherwise 0; with "
                          "--central-dp-noise always 0)")
    sim.add_argument("--records-per-patient", type=int, default=16,
                     help="DP per patient: at most this many of a sampled patient's samples per step")
    sim.add_argument("--no-balanced-decision", action="store_true",
                     help="under DP: no class-histogram release, the server decides by argmax (run config "
                          "balanced-decision=false)")
    sim.add_argument("--balanced-tau", type=float, default=0.0,
                     help="the balanced rule's tau, argmax log p - tau log prior (0, the default: the task's, "
                          "sequence-rnn 1.5, otherwise 1)")
    sim.add_argument("--no-prior-correction", action="store_true",
                     help="evaluate the global model as is, not adapted to each hospital's label prior")
    sim.add_argument("--test-fraction", type=float, default=0.25,
                     help="share of each hospital's data held out for its own evaluation")
    sim.add_argument("--image-size", type=int, default=28)
    sim.add_argument("--max-samples", type=int, default=0, help="use at most this many samples (0: all)")
    sim.add_argument("--seed", type=int, default=42)
    sim.add_argument("--bad-files", choices=("stop", "skip"), default="stop",
                     help="an unreadable image, record or row: stop naming it, or skip it and count it")
    sim.add_argument("--secure-aggregation", action="store_true",
                     help="SecAgg+: the server sees only the masked sum of the hospitals' updates")
    sim.add_argument("--central-dp-noise", type=float, default=0.0,
                     help="central (hospital-level) DP: noise multiplier on the mean update (0: off)")
    sim.add_argument("--central-dp-clip", type=float, default=1.0,
                     help="central DP: each hospital's update is clipped to this L2 norm")
    sim.add_argument("--separate-evaluate", action="store_true",
                     help="a train and an evaluate message per hospital and round, instead of one message that "
                          "evaluates the received model and then trains (fused-rounds=false)")
    sim.add_argument("--benefit", action="store_true",
                     help="each virtual hospital trains its local-only and personalised models after the last round "
                          "and shares their scores (node config benefit-report, share-benefit); the run adds the "
                          "pooled model and a cross-site matrix: benefit.csv, benefit.png, cross_site.csv, card `benefit`")
    sim.add_argument("--init-weights", type=Path, metavar="PATH",
                     help="start the global model from this state dict (.pt/.pth/.npz, e.g. a pretrained "
                          "network or an earlier run's final_model.pt); loaded strictly, its SHA-256 in the card")
    sim.add_argument("--out", help="run directory (default: runs/<time>-<task>)")
    sim.add_argument("--cpus-per-hospital", type=float, default=2.0)
    sim.add_argument("--gpus-per-hospital", type=float, default=0.0)
    sim.add_argument("--node-config", default="",
                     help="what each virtual hospital would put in its node config, e.g. "
                          "'epsilon-budget=5 run-epsilon-cap=3' (default ledger: RUN_DIR/ledgers/)")
    sim.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue a killed run from its last checkpoint, with its own settings (RUN_DIR/run.json); "
                          "only --cpus-per-hospital, --gpus-per-hospital, --node-config and --benefit may be given "
                          "with it")

    certs = commands.add_parser("certs", help="create the consortium CA, server certificate, hospital keys")
    which = certs.add_subparsers(dest="certs_command", required=True)
    init = which.add_parser("init", help="a CA and the SuperLink's TLS certificate")
    init.add_argument("--out", required=True, type=Path)
    init.add_argument("--server-name", required=True, help="the host name hospitals connect to")
    init.add_argument("--san", action="append", default=[], help="another DNS name or IP of the server")
    init.add_argument("--days", type=int, default=365)
    hosp = which.add_parser("hospital", help="a hospital SuperNode's key pair (EC, OpenSSH format)")
    hosp.add_argument("name")
    hosp.add_argument("--out", required=True, type=Path)

    link = commands.add_parser("superlink", help="check the certificates, then start flower-superlink")
    link.add_argument("--certs", required=True, type=Path, help="folder from `fedward certs init`")
    link.add_argument("--database", required=True, type=Path)
    link.add_argument("--host", default="0.0.0.0",
                      help="address of the Fleet API, the only API hospitals reach (default: all interfaces)")
    link.add_argument("--port", type=int, default=9092, help="port of the Fleet API (open it to the hospitals)")
    link.add_argument("--control-port", type=int, default=9093,
                      help="port of the control API (`flwr run`, `flwr supernode register`) on --control-host")
    link.add_argument("--control-host", default="127.0.0.1",
                      help="address of the control API (default 127.0.0.1, this machine only: it has no "
                           "user authentication; anything else prints why that is dangerous)")
    link.add_argument("--dry-run", action="store_true", help="print the command instead of running it")

    node = commands.add_parser("supernode", help="check key, CA and data, then start flower-supernode")
    node.add_argument("--superlink", required=True, help="HOST:PORT of the consortium's SuperLink")
    node.add_argument("--ca", required=True, type=Path, help="the consortium's ca.crt")
    node.add_argument("--key", required=True, type=Path, help="this hospital's private key")
    node.add_argument("--data", required=True, type=Path, help="this hospital's data path")
    node.add_argument("--hospital", required=True, help="this hospital's name in reports")
    node.add_argument("--port", type=int, default=9094, help="local port of the node's runtime API")
    node.add_argument("--ledger", type=Path, help="this hospital's privacy ledger (SQLite, created if missing; "
                      "default $FEDWARD_HOME/privacy-ledger.sqlite, FEDWARD_HOME defaulting to ~/.fedward)")
    node.add_argument("--dataset-name", help="the budget line this data belongs to (default: --hospital); "
                      "a changed file stays on the same line")
    node.add_argument("--epsilon-budget", type=float, help="cumulative epsilon this dataset may ever spend (default 10)")
    node.add_argument("--delta", type=float, help="this hospital's delta (default 1e-5)")
    node.add_argument("--run-epsilon-cap", type=float,
                      help="most epsilon one run, and all runs within run-cap-window-hours (default 24), may spend "
                           "(default 3); a run asking for more is refused")
    node.add_argument("--allow-no-dp", action="store_true", help="accept runs with dp=false (default: refuse them)")
    node.add_argument("--require-secure-aggregation", action="store_true",
                      help="train only inside SecAgg+: refuse plain train messages")
    node.add_argument("--node-config", default="",
                      help="more node config as key=value pairs, text in double quotes, e.g. "
                           "'bad-files=\"skip\"' (skip unreadable rows, images, records; default \"stop\") or "
                           "'split-seed=3'")
    node.add_argument("--approve-fab", action="append", default=[], metavar="SHA256",
                      help="run the ClientApp inside the app bundle with this SHA-256 (the refusal in this "
                           "node's log prints it); without it this hospital runs only its own client.app, "
                           "whatever bundle a run sends")
    node.add_argument("--activation-wait", type=float, default=120.0, metavar="SECONDS",
                      help="keep retrying, with backoff, while the SuperLink refuses to activate this node "
                           "(exit 305: key not registered yet, or the node's previous session still online)")
    node.add_argument("--max-retries", type=int, help="give up after this many failed connection attempts")
    node.add_argument("--cold", action="store_true",
                      help="a fresh process (re-importing torch) per message instead of a forked one; "
                           "the same app-bundle check")
    node.add_argument("--dry-run", action="store_true", help="print the command instead of running it")

    launch_run = commands.add_parser(
        "run", help="start a run on the SuperLink (flwr run), follow it, exit non-zero if it did not complete")
    launch_run.add_argument("app", nargs="?", default=".", help="the app folder to send (default: .)")
    launch_run.add_argument("federation", help="the SuperLink's name in $FLWR_HOME/config.toml")
    launch_run.add_argument("--run-config", default="", help="run settings, e.g. 'num-server-rounds=10 "
                            "out-dir=\"/srv/fedward/runs/r1\"'")
    launch_run.add_argument("--timeout", type=float, default=86400.0, help="give up following after SECONDS")

    benefit = commands.add_parser("benefit", help="a hospital's benefit report: local-only, global, personalised")
    benefit_view = benefit.add_subparsers(dest="benefit_command", required=True)
    benefit_show = benefit_view.add_parser("show", help="print the hospital's benefit table(s)")
    benefit_show.add_argument("--dir", type=Path, required=True,
                              help="the hospital's benefit-dir (node config), or a `fedward simulate --benefit` run")
    benefit_show.add_argument("--json", action="store_true")

    ledger = commands.add_parser("ledger", help="a hospital's privacy ledger: budget, spent, per-run epsilon")
    view = ledger.add_subparsers(dest="ledger_command", required=True)
    for name, text in (("show", "print the ledger (a table, or --json)"), ("export", "write a CSV")):
        sub = view.add_parser(name, help=text)
        sub.add_argument("--ledger", type=Path, default=None,
                         help="ledger path (default: $FEDWARD_LEDGER, else the SuperNode's default "
                              "$FEDWARD_HOME/privacy-ledger.sqlite, FEDWARD_HOME defaulting to ~/.fedward)")
        if name == "show":
            sub.add_argument("--json", action="store_true")
        else:
            sub.add_argument("--out", type=Path, required=True, help="CSV file to write")
    return parser


# what a resumed simulation still takes from the command line; every other flag is in the run's run.json
RESUME_FLAGS = frozenset({"command", "resume", "cpus_per_hospital", "gpus_per_hospital", "node_config", "benefit"})


def flags_ignored_by_resume(args: argparse.Namespace) -> list[str]:
    """The flags given with --resume that differ from their defaults and would not apply."""
    defaults = vars(build_parser().parse_args(["simulate"]))
    return [f"--{name.replace('_', '-')}" for name, value in vars(args).items()
            if name not in RESUME_FLAGS and name in defaults and value != defaults[name]]


# run-config keys whose `fedward simulate` flag has another name; (key, value) -> the flag that sets it
_FLAG_NAMES = {"num-server-rounds": "--rounds", "data-path": "--data", "min-hospitals": "--hospitals", "out-dir": "--out"}
# the switches a setting error names
_SWITCHES = {("secure-aggregation", "true"): "--secure-aggregation",
             ("balanced-decision", "false"): "--no-balanced-decision",
             ("balanced-decision", "true"): "the balanced rule (no --no-balanced-decision)"}
_SETTING = re.compile(r"(?<![\w-])([a-z][a-z0-9-]*)=('[^']*'|[^\s,;:)]+)")


def in_flag_terms(message: str) -> str:
    """A run-config error as a `fedward simulate` user typed it: `server-momentum=0.5` ->
    `--server-momentum 0.5`, `num-server-rounds=-1` -> `--rounds -1`, `secure-aggregation=true` -> `--secure-aggregation`."""
    flags = {f"--{dest.replace('_', '-')}" for dest in vars(build_parser().parse_args(["simulate"]))}

    def spelled(match: re.Match[str]) -> str:
        key, value = match.groups()
        switch = _SWITCHES.get((key, value.lower()))
        if switch:
            return switch
        flag = _FLAG_NAMES.get(key, f"--{key}")
        return f"{flag} {value}" if flag in flags else match.group(0)

    return _SETTING.sub(spelled, message)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.no_class_weighting and args.class_weighting not in ("auto", "false"):
        raise FedwardError(f"--no-class-weighting contradicts --class-weighting {args.class_weighting}; give one")
    if args.hospitals < 1:
        raise FedwardError(f"--hospitals={args.hospitals} must be at least 1")
    RunConfig(task=args.task, strategy=args.strategy).validate()
    data = args.data or DEFAULT_DATA.get(args.task)
    if data is None:
        raise FedwardError(f"--data is required for task {args.task}: pass a file or folder")
    if not data.startswith("builtin:"):
        data = str(Path(data).expanduser().resolve())
    out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.task}"
    return RunConfig(
        task=args.task, data_path=data, partition=args.partition, num_server_rounds=args.rounds,
        strategy=args.strategy, dp=not args.no_dp, epsilon=args.epsilon, delta=args.delta,
        max_grad_norm=args.max_grad_norm, local_epochs=args.local_epochs,
        min_local_steps=args.min_local_steps,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, model=args.model, image_size=args.image_size,
        max_samples=args.max_samples, class_weighting="false" if args.no_class_weighting else args.class_weighting,
        server_momentum=args.server_momentum,
        records_per_patient=args.records_per_patient,
        prior_correction=not args.no_prior_correction, balanced_decision=not args.no_balanced_decision,
        balanced_tau=args.balanced_tau,
        test_fraction=args.test_fraction, min_hospitals=args.hospitals, seed=args.seed, bad_files=args.bad_files,
        secure_aggregation=args.secure_aggregation,
        central_dp_noise=args.central_dp_noise, central_dp_clip=args.central_dp_clip,
        fused_rounds=not args.separate_evaluate, out_dir=str(Path(out).resolve()),
        init_weights=str(args.init_weights.expanduser().resolve()) if args.init_weights else "",
    )


def check_before_start(config: RunConfig, hospitals: int) -> None:
    """Read the data and split it once here, so a bad input fails before Ray starts."""
    from common.partition import partition_index
    from common.tasks import get_task, load_data

    config.validate()
    data = load_data(config)
    model = get_task(config.task).build_model(data.input_shape, data.num_classes, config)  # e.g. --model
    if config.init_weights:
        from server.init_weights import apply_init_weights, read_init_weights

        apply_init_weights(model, read_init_weights(config.init_weights))
    for hospital in range(hospitals):
        partition_index(data.train, config.partition_spec, hospitals, hospital, config.seed)
    from server.run_state import RUN_FILE

    if (Path(config.out_dir) / "metrics.jsonl").exists() or (Path(config.out_dir) / RUN_FILE).exists():
        raise FedwardError(f"{config.out_dir} already holds a run; choose another --out, or continue that run "
                           f"with fedward simulate --resume {config.out_dir}")


def simulate(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, lambda *_: interrupted(None))  # until the run has a folder
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from client.hospital import SIMULATED_NODE_CONFIG
    from common.tasks import resolve
    from fedward.simulation import run_simulation

    if args.resume:
        ignored = flags_ignored_by_resume(args)
        if ignored:
            raise FedwardError(f"--resume {args.resume} continues that run with the settings in its run.json; "
                               f"{', '.join(ignored)} would be ignored: drop {'it' if len(ignored) == 1 else 'them'}, or start a new run without --resume")
        config = resolve(resumed_config(args.resume))  # a run.json written before task defaults: 0 -> default
        hospitals = config.min_hospitals
        if all((args.resume / name).is_file() for name in ("model_card.json", "report.png")):  # written last
            print(f"fedward: {args.resume} finished all {config.num_server_rounds} rounds; nothing to resume",
                  flush=True)
            print_summary(json.loads((args.resume / "model_card.json").read_text()), args.resume)
            return 0
    else:
        try:
            config = resolve(config_from_args(args))
            hospitals = args.hospitals
            check_before_start(config, hospitals)
        except ConfigError as err:
            raise ConfigError(in_flag_terms(str(err))) from None
        except DataError as err:  # e.g. partition=natural on data without sites
            raise DataError(in_flag_terms(str(err)), err.public) from None
    os.environ[SIMULATED_NODE_CONFIG] = json.dumps(simulated_node_config(config, args.node_config,
                                                                               getattr(args, "benefit", False)))
    print(f"fedward: {config.task} on {config.data_path}, {hospitals} hospitals "
          f"({config.partition}), {config.num_server_rounds} rounds of {config.strategy}"
          + (f" with server momentum {config.server_momentum:g}" if config.server_momentum > 0 else "") + ", "
          + (f"DP epsilon={config.epsilon:g} delta={config.delta:g}, " if config.dp
             else f"no DP, class weights {'on' if config.class_weighting == 'true' else 'off'}, ")
          + f"batch {config.batch_size}" + (f", clip {config.max_grad_norm:g}" if config.dp else "")
          + f", lr {config.lr:g}" + (" falling on a cosine over the rounds" if config.lr_schedule == "cosine" else "")
          + f", {config.local_epochs} local epoch{'s' if config.local_epochs > 1 else ''} a round"
          + (f" (or more, to at least {config.min_local_steps} local steps a round: min-local-steps)"
             if not config.dp and config.min_local_steps > 0 else "")
          + (", secure aggregation (SecAgg+)" if config.secure_aggregation else "")
          + (f", resuming {config.out_dir}" if config.resume else ""),
          flush=True)
    signal.signal(signal.SIGINT, lambda *_: interrupted(Path(config.out_dir)))  # the run's folder from here
    out_dir = run_simulation(config, hospitals, args.cpus_per_hospital, args.gpus_per_hospital)
    card_path = out_dir / "model_card.json"
    if not card_path.exists():
        raise FedwardError(f"the run ended without a model card in {out_dir}; see the log above")
    print_summary(json.loads(card_path.read_text()), out_dir)
    return 0


def interrupted(out_dir: Path | None) -> NoReturn:
    """Ctrl-C during `fedward simulate` (its SIGINT handler): stop the whole simulation now, say what is
    kept, and leave with the shell's code for SIGINT (130).

    A KeyboardInterrupt would hang: Flower's ServerApp thread (not a daemon) waits for replies no
    hospital will send. Ray's workers and agents are this process's descendants and are killed first,
    so no hospital goes on training the round in flight (Ray's agents would linger for a minute) and
    the ServerApp thread has no time to record that round as failed. Every file fedward writes is
    replaced atomically; a hospital killed while training trains the round again under its own
    reservation on resume (client/privacy_state.py), and one that had sent it sends the same update."""
    _kill_descendants()
    from server.run_state import RUN_FILE, latest_checkpoint

    if out_dir is None or not (out_dir / RUN_FILE).is_file():
        kept = "the run had not started; nothing was saved"
    else:
        checkpoint = latest_checkpoint(out_dir)  # round-NNNN.npz
        last = int(checkpoint.stem.split("-")[1]) if checkpoint else 0
        kept = (f"{out_dir} keeps {'round 1' if last == 1 else f'rounds 1-{last}'}; continue with "
                if last else "no round had finished; to start it again with the same settings: ") \
            + f"fedward simulate --resume {out_dir}"
    try:
        sys.stdout.flush()
    except (OSError, RuntimeError):  # interrupted mid-write: the line may stay unfinished
        pass
    os.write(2, f"\nfedward: interrupted; {kept}\n".encode())
    os._exit(130)


def _kill_descendants() -> None:
    """SIGKILL every process below this one (Ray's raylet, workers and agents; Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    below, queue = [], list(parents.get(os.getpid(), []))
    while queue:
        pid = queue.pop()
        below.append(pid)
        queue.extend(parents.get(pid, []))
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def resumed_config(run_dir: Path) -> RunConfig:
    """The killed run's own settings (run.json), to be continued in place."""
    from server.run_state import RUN_FILE

    path = run_dir / RUN_FILE
    if not path.is_file():
        raise FedwardError(f"--resume {run_dir}: no {RUN_FILE} there; give the directory of a fedward run")
    try:
        saved = json.loads(path.read_text())["config"]
    except (ValueError, KeyError) as err:
        raise FedwardError(f"--resume {run_dir}: {path} is damaged ({err})") from None
    # a run.json from before lr-schedule existed ran at a constant lr: it resumes at one
    return RunConfig.from_mapping({"lr-schedule": "constant", **saved, "resume": True, "out-dir": str(run_dir.resolve())})


def simulated_node_config(config: RunConfig, text: str, benefit: bool = False) -> dict[str, object]:
    """What every virtual hospital gets as node config; kept in the run directory for --resume.

    With DP each virtual hospital keeps its privacy ledger in RUN_DIR/ledgers/ unless
    --node-config names another; its DP noise repeats with --seed (reproducible-noise=true,
    --node-config 'reproducible-noise=false' for secret noise as at a real hospital); with
    --no-dp its node config allows it (allow-no-dp=true).
    """
    from flwr.common.config import parse_config_args

    from client.node_keys import check_node_config as check_node_settings
    from client.node_privacy import node_privacy

    out_dir = Path(config.out_dir)
    kept = out_dir / "simulated-node-config.json"
    if config.resume and kept.exists() and not text:
        return dict(json.loads(kept.read_text()))
    check_node_config(text)  # a malformed value is a message, not a traceback
    values = parse_config_args([text]) if text.strip() else {}
    for key, flag in (("test-fraction", "--test-fraction"), ("split-seed", "--seed"), ("data-path", "--data")):
        if key in values:
            raise FedwardError(f"--node-config {key}=...: virtual hospitals take it from {flag}; give it there")
    check_node_settings(values)
    if config.dp:  # the researcher's --delta is what the virtual hospitals' ledgers account with
        values.setdefault("delta", config.delta)
    if config.dp and "privacy-ledger" not in values:
        (out_dir / "ledgers").mkdir(parents=True, exist_ok=True)
        values["privacy-ledger"] = str(out_dir / "ledgers" / "privacy-ledger.sqlite")
    # A simulation is the researcher's own: its noise may repeat from --seed (a real hospital's
    # is secret; a SuperNode refuses reproducible-noise), and --no-dp is its own choice.
    values.setdefault("reproducible-noise", True)
    if benefit:  # --benefit: each virtual hospital's report, shared, its folder under RUN_DIR/benefit/
        values.update({"benefit-report": True, "share-benefit": True})
        values.setdefault("benefit-dir", str(out_dir / "benefit"))
    if not config.dp:
        values.setdefault("allow-no-dp", True)
    node_privacy(values)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(values, indent=2) + "\n")
    return dict(values)


def certs(args: argparse.Namespace) -> int:
    from deploy.certs import hospital_keys, init_ca_and_server

    if args.certs_command == "init":
        paths = init_ca_and_server(args.out, args.server_name, args.san, args.days)
        print(f"CA: {paths.ca_cert} (give to every hospital); key {paths.ca_key} (keep offline)")
        print(f"SuperLink: {paths.server_cert}, {paths.server_key}")
    else:
        private, public = hospital_keys(args.out, args.name)
        print(f"hospital {args.name}: private key {private} (stays at the hospital, mode 0600)")
        print(f"public key {public}: the operator registers it with `flwr supernode register`")
    return 0


def privacy_node_config(args: argparse.Namespace) -> str:
    """The hospital's privacy flags as node config, checked (and the ledger opened) now.

    DP is on unless the hospital allows otherwise, and a ledger is always kept: without
    --ledger it is the default one, named explicitly in the node config so the ClientApp
    uses that file whatever its environment. What applies is printed, defaults marked."""
    from flwr.common.config import parse_config_args

    from client.node_keys import check_node_config as check_node_settings
    from client.node_privacy import default_ledger, node_privacy
    from common.ledger import PrivacyLedger

    values: dict[str, object] = {
        "privacy-ledger": args.ledger and str(args.ledger.resolve()), "dataset-name": args.dataset_name,
        "epsilon-budget": args.epsilon_budget, "delta": args.delta, "run-epsilon-cap": args.run_epsilon_cap,
        "allow-no-dp": args.allow_no_dp or None, "require-secure-aggregation": args.require_secure_aggregation or None}
    values = {k: v for k, v in values.items() if v is not None}
    extra = parse_config_args([args.node_config]) if args.node_config.strip() else {}
    for key in sorted(set(values) & set(extra)):
        raise FedwardError(f"{key} is set both by a flag and in --node-config; give it once")
    for key, flag in (("data-path", "--data"), ("hospital", "--hospital")):
        if key in extra:
            raise FedwardError(f"{key} is set by {flag}; remove it from --node-config")
    settings = {**extra, **values, "data-path": str(args.data), "hospital": args.hospital}
    check_node_settings(settings)
    privacy = node_privacy(settings)
    if "privacy-ledger" not in settings:
        default_ledger().parent.mkdir(parents=True, exist_ok=True)
        values["privacy-ledger"] = str(default_ledger())
    assert privacy.ledger is not None  # a real hospital always keeps one
    PrivacyLedger(privacy.ledger).close()
    print(privacy.announcement(args.hospital), file=sys.stderr, flush=True)
    return "".join(f'{k}="{v}" ' if isinstance(v, str) else f"{k}={str(v).lower() if isinstance(v, bool) else v} "
                   for k, v in values.items())


def check_node_config(text: str) -> None:
    """`--node-config` parsed as Flower will, so a typo stops here with a message, not a traceback there."""
    from flwr.common.config import parse_config_args

    if not text.strip():
        return
    try:
        parse_config_args([text])
    except Exception:  # noqa: BLE001 - Flower raises click's exception type
        raise FedwardError(
            f"--node-config {text!r} is not key=value pairs Flower can read: values are numbers, true/false or "
            "text in double quotes, e.g. --node-config 'bad-files=\"skip\"'") from None


def check_approvals(approved: list[str]) -> None:
    import re

    for sha in approved:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise FedwardError(f"--approve-fab {sha!r}: give the app bundle's SHA-256 as 64 hex digits "
                               "(the refusal in this node's log prints it)")


def launch(args: argparse.Namespace) -> int:
    from fedward.launch import (CONTROL_API_WARNING, control_api_is_open, describe, run_supernode,
                                superlink_command, supernode_command, supernode_processes)

    if args.command == "superlink":
        command = superlink_command(args.certs, args.database, args.host, args.port,
                                    args.control_host, args.control_port)
        if control_api_is_open(args.control_host):
            print(CONTROL_API_WARNING.format(address=f"{args.control_host}:{args.control_port}"),
                  file=sys.stderr, flush=True)
    else:
        check_node_config(args.node_config)
        check_approvals(args.approve_fab)
        command = supernode_command(args.superlink, args.ca, args.key, args.data, args.hospital,
                                    args.port, privacy_node_config(args) + args.node_config)
        if args.max_retries is not None:
            command += ["--max-retries", str(args.max_retries)]
    if args.dry_run:
        if args.command == "supernode":  # the two processes it runs, not Flower's stock SuperNode
            for process in supernode_processes(command, args.port, tuple(args.approve_fab), args.cold):
                print(describe(process))
        else:
            print(describe(command))
        return 0
    if args.command == "supernode":
        return run_supernode(command, args.port, tuple(args.approve_fab), args.cold, args.activation_wait)
    os.execv(command[0], command)
    return 1  # not reached


def ledger(args: argparse.Namespace) -> int:
    from client.node_privacy import default_ledger
    from fedward.ledger_view import export_csv, show

    if args.ledger is None:  # where `fedward supernode` keeps it when no --ledger was given
        args.ledger = Path(os.environ["FEDWARD_LEDGER"]) if os.environ.get("FEDWARD_LEDGER") else default_ledger()

    if args.ledger_command == "show":
        print(show(args.ledger, args.json))
    else:
        rows = export_csv(args.ledger, args.out)
        print(f"wrote {rows} run rows to {args.out}")
    return 0


def print_summary(card: dict, out_dir: Path) -> None:
    final = card["final_metrics"]
    fed = final.get("federated_evaluation") or {}
    print("\n== fedward summary ==")
    print(f"task {card['task']} | strategy {card['strategy']} | rounds {card['rounds']}")
    print(f"federated (hospitals' held-out splits): {_headline(fed)}")
    central = final.get("central_evaluation")
    if central:
        prior = final.get("class_prior")
        tau = f", tau {prior.get('tau', 1):g}" if prior else ""
        rule = f" (balanced decision rule on the hospitals' DP class prior{tau})" if prior else ""
        print(f"central test split{rule}: {_headline(central)}")
    for key in ("tstr-accuracy", "trtr-accuracy", "tstr-ratio", "fd", "fd-real", "fd-ratio"):
        if key in final:
            print(f"{key} {_fmt(final[key])}")
    dp = card.get("differential_privacy", {})
    if dp.get("enabled") and dp.get("privacy_unit"):
        print(f"privacy unit: {dp['privacy_unit']}")
    if card.get("secure_aggregation", {}).get("enabled"):
        print("secure aggregation (SecAgg+): the server saw only the masked sum of updates")
    cdp = card.get("central_dp", {})
    if cdp.get("enabled"):
        print(f"central DP (hospital-level) epsilon {_fmt(cdp['epsilon'])} at delta {cdp['delta']:g}, "
              f"{cdp['releases']} noisy rounds; the per-hospital epsilon below is sample-level")
    for name, info in card["hospitals"].items():
        spent = f"epsilon spent {_fmt(info['epsilon_spent'])}" if dp.get("enabled") else "no DP"  # not "epsilon 0"
        print(f"  {name:<14} {spent} | {_headline(info['final_test_metrics'] or {})}")
    if card.get("benefit"):
        from common.benefit import format_table

        print("benefit per hospital (its held-out split; differences to local-only with a bootstrap 95% interval):")
        print(format_table(card["benefit"]["hospitals"]))
        print(f"  ({out_dir}/benefit.csv, benefit.png" + (", cross_site.csv" if card["benefit"].get("cross_site") else "")
              + "; each hospital's models in its benefit-dir)")
    print(f"report: {out_dir} (metrics.jsonl, model_card.json, report.png, final_model.pt)")


def _headline(scores: dict) -> str:
    """Balanced accuracy and AUROC first; accuracy beside always answering the most common class."""
    return (f"balanced accuracy {_fmt(scores.get('balanced_accuracy'))} | AUROC {_fmt(scores.get('auroc'))} | "
            f"accuracy {_fmt(scores.get('accuracy'))} (majority class {_fmt(scores.get('majority_baseline'))})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _glued(argv: list[str]) -> list[str]:
    """`--flag -inf` as `--flag=-inf`: argparse reads a value such as -inf, -nan or -1e-3 as an unknown flag
    ("expected one argument"), so the setting's own check, which names the setting, never saw it."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and token.startswith("-"):
            try:
                float(token)
            except ValueError:
                pass
            else:
                out[-1] = f"{out[-1]}={token}"
                continue
        out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_glued(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "simulate":
            return simulate(args)
        if args.command == "certs":
            return certs(args)
        if args.command in ("superlink", "supernode"):
            return launch(args)
        if args.command == "run":
            from fedward.operator_run import run

            return run(args.app, args.federation, args.run_config, args.timeout)
        if args.command == "benefit":
            from fedward.benefit_view import show as show_benefit

            print(show_benefit(args.dir, args.json))
            return 0
        if args.command == "ledger":
            return ledger(args)
    except FedwardError as err:
        print(f"fedward: error: {err}", file=sys.stderr)
        return 2
    return 1
