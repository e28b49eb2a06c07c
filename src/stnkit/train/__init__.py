"""The application's training half: run configs, the one engine, objectives, checkpoints and
multi-process plumbing.

    from stnkit.train import build, train, resume
    run_dir = train(build({"experiment": "rts", "model": "st-cnn-affine", "epochs": 3}))
    resume(run_dir, {"epochs": 6})          # continue it, three epochs more
"""
from .config import RunConfig, build
from .engine import TrainingDiverged, resume, train
from .objectives import Classification, Objective, objective_for
from .runs import finished, load_run, run_dir_of
from .stops import TrainingInterrupted

__all__ = ["Classification", "Objective", "RunConfig", "TrainingDiverged", "TrainingInterrupted", "build", "finished",
           "load_run", "objective_for", "resume", "run_dir_of", "train"]
