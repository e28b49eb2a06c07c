"""The application's training half: run configs, the one engine, objectives, checkpoints and
multi-process plumbing."""
