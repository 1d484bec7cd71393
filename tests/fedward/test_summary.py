"""The console summary says which decision rule scored the central test split, and the GAN's fidelity."""

from pathlib import Path

from fedward.cli import print_summary


def card(**final: object) -> dict:
    scores = {"balanced_accuracy": 0.7, "auroc": 0.9, "accuracy": 0.8, "majority_baseline": 0.6}
    return {"task": "image-cnn", "strategy": "fedavg", "rounds": 1, "hospitals": {},
            "final_metrics": {"federated_evaluation": scores, "central_evaluation": scores, **final}}


def test_central_line_names_the_balanced_rule_only_when_it_scored(capsys, tmp_path: Path):
    print_summary(card(class_prior={"prior": [0.5, 0.5]}), tmp_path)  # a card from before balanced-tau: tau 1
    assert "central test split (balanced decision rule on the hospitals' DP class prior, tau 1):" in capsys.readouterr().out
    print_summary(card(class_prior={"prior": [0.5, 0.5], "tau": 1.25}), tmp_path)
    assert "(balanced decision rule on the hospitals' DP class prior, tau 1.25):" in capsys.readouterr().out
    print_summary(card(), tmp_path)
    out = capsys.readouterr().out
    assert "central test split:" in out and "balanced decision rule" not in out


def test_the_gan_fidelity_is_in_the_summary(capsys, tmp_path: Path):
    print_summary(card(**{"tstr-accuracy": 0.63, "tstr-ratio": 0.74, "fd": 28.0, "fd-real": 0.4, "fd-ratio": 70.0}), tmp_path)
    out = capsys.readouterr().out
    assert "fd 28" in out and "fd-real 0.4" in out and "fd-ratio 70" in out, out
    assert "tstr-ratio 0.74" in out, "the GAN's headline target (issue 18: >= 0.9)"
